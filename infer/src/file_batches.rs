//! Image files read in batches for a model, as `kiln infer` and applications walk a folder: each batch holds the
//! images that decoded (with their files, in order) and the files that did not, with the reason, so that one
//! unreadable file costs its own entry and nothing more.

use std::path::PathBuf;

use image::RgbImage;

use crate::exif::Exif;
use crate::preprocess::decode_rgb_with;

/// One batch of files: the decoded images with their files, in input order, and the files that could not be read.
#[derive(Debug, Default)]
pub struct FileBatch {
    pub images: Vec<RgbImage>,
    pub paths: Vec<PathBuf>,
    pub unreadable: Vec<(PathBuf, String)>,
}

/// `files` in batches of `batch` (at least 1), each decoded when it is reached (any format, EXIF orientation
/// applied, RGB8: [`crate::preprocess::decode_rgb`]).
pub fn file_batches(files: &[PathBuf], batch: usize) -> impl Iterator<Item = FileBatch> + '_ {
    file_batches_with(files, batch, Exif::Apply)
}

/// [`file_batches`] under an EXIF convention (a detector's own: [`crate::Detector::exif`]).
pub fn file_batches_with(files: &[PathBuf], batch: usize, exif: Exif) -> impl Iterator<Item = FileBatch> + '_ {
    files.chunks(batch.max(1)).map(move |chunk| {
        let mut read = FileBatch::default();
        for path in chunk {
            match decode_rgb_with(path, exif) {
                Ok(image) => {
                    read.images.push(image);
                    read.paths.push(path.clone());
                }
                Err(reason) => read.unreadable.push((path.clone(), reason)),
            }
        }
        read
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_the_order_and_set_unreadable_files_aside() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for i in 0..5 {
            let path = dir.path().join(format!("{i}.png"));
            if i == 3 {
                std::fs::write(&path, b"not a png").unwrap();
            } else {
                RgbImage::from_pixel(4 + i, 2, image::Rgb([0, 0, 0])).save(&path).unwrap();
            }
            files.push(path);
        }
        let batches: Vec<FileBatch> = file_batches(&files, 2).collect();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[0].paths, files[..2]);
        assert_eq!(batches[1].paths, [files[2].clone()]);
        assert_eq!(batches[1].images[0].width(), 6, "the image of its own file");
        assert_eq!(batches[1].unreadable.len(), 1);
        assert_eq!(batches[1].unreadable[0].0, files[3]);
        assert!(!batches[1].unreadable[0].1.is_empty(), "the reason is given");
        assert_eq!(batches[2].paths, [files[4].clone()]);
        assert_eq!(file_batches(&files, 0).count(), 5, "a batch of 0 reads one at a time");
    }
}
