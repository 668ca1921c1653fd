//! Predictions listed as text, one input at a time, the same way wherever they come from (`kiln infer` on an
//! exported model, `kiln predict` on a checkpoint, an application): a table for people, a JSON object per line,
//! or CSV with a header and one row per class, box or line. An input that could not be read is one row with
//! its reason, in the same columns.

use std::io::{self, Write};
use std::path::Path;

use crate::classifier::Classification;
use crate::nms::Detection;
use crate::recognizer::Reading;

/// How a listing is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListingFormat {
    /// `path  result` lines for people.
    Table,
    /// One JSON object per input and line.
    Json,
    /// A header, then one row per class, box or line.
    Csv,
}

/// A CSV field, quoted when it holds a comma, a quote, a newline or edge spaces.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A task's result for one input, as a listing writes it.
pub trait Listed {
    /// The CSV header; its last column is `error`.
    const CSV_HEADER: &'static str;
    /// Writes the result of the input at `path`; `names` are the class names its indices refer to.
    fn write(&self, out: &mut dyn Write, format: ListingFormat, path: &Path, names: &[String]) -> io::Result<()>;
}

/// Writes the CSV header when the format has one.
pub fn write_header<T: Listed>(out: &mut dyn Write, format: ListingFormat) -> io::Result<()> {
    if format == ListingFormat::Csv {
        writeln!(out, "{}", T::CSV_HEADER)?;
    }
    Ok(())
}

/// Writes an input that could not be read, with `reason`, in `T`'s columns.
pub fn write_error<T: Listed>(out: &mut dyn Write, format: ListingFormat, path: &Path, reason: &str) -> io::Result<()> {
    let shown = path.display().to_string();
    match format {
        ListingFormat::Table => writeln!(out, "{shown}  error: {reason}"),
        ListingFormat::Json => writeln!(out, "{}", serde_json::json!({"path": shown, "error": reason})),
        ListingFormat::Csv => {
            let empty = T::CSV_HEADER.split(',').count().saturating_sub(2);
            writeln!(out, "{},{}{}", csv_field(&shown), ",".repeat(empty), csv_field(reason))
        }
    }
}

/// Writes a whole listing: the header, then each input's result or its error. Returns the inputs that failed.
pub fn write_listing<'a, T: Listed + 'a>(
    out: &mut dyn Write,
    format: ListingFormat,
    results: impl IntoIterator<Item = (&'a Path, Result<&'a T, &'a str>)>,
    names: &[String],
) -> io::Result<usize> {
    write_header::<T>(out, format)?;
    let mut failed = 0;
    for (path, result) in results {
        match result {
            Ok(r) => r.write(out, format, path, names)?,
            Err(reason) => {
                failed += 1;
                write_error::<T>(out, format, path, reason)?;
            }
        }
    }
    Ok(failed)
}

impl Listed for Classification {
    const CSV_HEADER: &'static str = "path,rank,class,probability,energy,error";

    fn write(&self, out: &mut dyn Write, format: ListingFormat, path: &Path, _names: &[String]) -> io::Result<()> {
        let shown = path.display().to_string();
        let top = &self.top;
        match format {
            ListingFormat::Table => {
                let classes: Vec<String> = top.iter().map(|c| format!("{} {:.3}", c.class, c.probability)).collect();
                let energy = self.energy.map(|e| format!("  (energy {e:.2})")).unwrap_or_default();
                writeln!(out, "{shown}  {}{energy}", classes.join(", "))
            }
            ListingFormat::Json => {
                writeln!(out, "{}", serde_json::json!({"path": shown, "top": top, "energy": self.energy}))
            }
            ListingFormat::Csv => {
                let energy = self.energy.map(|e| format!("{e:.4}")).unwrap_or_default();
                for (rank, c) in top.iter().enumerate() {
                    writeln!(
                        out,
                        "{},{},{},{:.6},{energy},",
                        csv_field(&shown),
                        rank + 1,
                        csv_field(&c.class),
                        c.probability
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// One image's detections.
impl Listed for Vec<Detection> {
    const CSV_HEADER: &'static str = "path,class,score,x1,y1,x2,y2,error";

    fn write(&self, out: &mut dyn Write, format: ListingFormat, path: &Path, names: &[String]) -> io::Result<()> {
        let shown = path.display().to_string();
        let name = |c: usize| names.get(c).map_or("?", String::as_str);
        match format {
            ListingFormat::Table => {
                let boxes: Vec<String> = self
                    .iter()
                    .map(|d| {
                        let [x1, y1, x2, y2] = d.bbox;
                        format!("{} {:.3} [{x1:.1}, {y1:.1}, {x2:.1}, {y2:.1}]", name(d.class), d.score)
                    })
                    .collect();
                writeln!(
                    out,
                    "{shown}  {} detection(s){}{}",
                    self.len(),
                    if boxes.is_empty() { "" } else { ": " },
                    boxes.join("; ")
                )
            }
            ListingFormat::Json => {
                let list: Vec<serde_json::Value> = self
                    .iter()
                    .map(|d| {
                        serde_json::json!({"class": name(d.class), "class_index": d.class, "score": d.score, "bbox": d.bbox})
                    })
                    .collect();
                writeln!(out, "{}", serde_json::json!({"path": shown, "detections": list}))
            }
            ListingFormat::Csv => {
                for d in self {
                    let [x1, y1, x2, y2] = d.bbox;
                    writeln!(
                        out,
                        "{},{},{:.6},{x1:.2},{y1:.2},{x2:.2},{y2:.2},",
                        csv_field(&shown),
                        csv_field(name(d.class)),
                        d.score
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl Listed for Reading {
    const CSV_HEADER: &'static str = "path,text,confidence,error";

    fn write(&self, out: &mut dyn Write, format: ListingFormat, path: &Path, _names: &[String]) -> io::Result<()> {
        let shown = path.display().to_string();
        match format {
            ListingFormat::Table => writeln!(out, "{shown}  {}  ({:.3})", self.text, self.confidence),
            ListingFormat::Json => writeln!(
                out,
                "{}",
                serde_json::json!({"path": shown, "text": self.text, "confidence": self.confidence, "chars": self.chars})
            ),
            ListingFormat::Csv => {
                writeln!(out, "{},{},{:.6},", csv_field(&shown), csv_field(&self.text), self.confidence)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed<T: Listed>(format: ListingFormat, ok: &T, names: &[String]) -> String {
        let (a, b) = (Path::new("a.png"), Path::new("dir/b, c.png"));
        let mut out = Vec::new();
        let failed =
            write_listing(&mut out, format, [(a, Ok(ok)), (b, Err("not an image"))], names).expect("writes to memory");
        assert_eq!(failed, 1);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn error_rows_keep_each_tasks_columns() {
        let names = vec!["cat".to_string(), "dog".to_string()];
        let detections = vec![Detection { bbox: [1.0, 2.0, 3.0, 4.0], score: 0.5, class: 1 }];
        let csv = listed(ListingFormat::Csv, &detections, &names);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "path,class,score,x1,y1,x2,y2,error");
        assert_eq!(lines[1], "a.png,dog,0.500000,1.00,2.00,3.00,4.00,");
        assert_eq!(lines[2], "\"dir/b, c.png\",,,,,,,not an image");
        let reading = Reading { text: "42".into(), confidence: 0.9, chars: vec![] };
        let csv = listed(ListingFormat::Csv, &reading, &names);
        assert_eq!(csv.lines().nth(2), Some("\"dir/b, c.png\",,,not an image"));
        let table = listed(ListingFormat::Table, &reading, &names);
        assert_eq!(table, "a.png  42  (0.900)\ndir/b, c.png  error: not an image\n");
        let json = listed(ListingFormat::Json, &detections, &names);
        let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
        assert_eq!(first["detections"][0]["class"], "dog");
    }
}
