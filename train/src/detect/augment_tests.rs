//! Tests of `augment`: the letterbox formula, box round trips, pixels and boxes moving together under flip, crop
//! and mosaic, the `min_visible` rule, identities, determinism and config validation.

use super::*;
use image::Rgb;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::cell::RefCell;

/// Nearest-neighbour resizer with the production signature: output pixel `i` samples the source at
/// `left + (i + ½)·width / out_width`, so a pixel's colour is exactly the source pixel under its centre.
fn nearest(image: &RgbImage, crop: Crop, width: u32, height: u32) -> Vec<u8> {
    let (w, h) = image.dimensions();
    let mut out = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        let sy = (crop.top + (y as f64 + 0.5) * crop.height / height as f64).floor().clamp(0.0, (h - 1) as f64);
        for x in 0..width {
            let sx = (crop.left + (x as f64 + 0.5) * crop.width / width as f64).floor().clamp(0.0, (w - 1) as f64);
            out.extend_from_slice(&image.get_pixel(sx as u32, sy as u32).0);
        }
    }
    out
}

/// Like [`nearest`], but fails when a crop reaches outside the image or is empty (fast_image_resize refuses
/// those).
fn strict(image: &RgbImage, crop: Crop, width: u32, height: u32) -> Vec<u8> {
    let (w, h) = (image.width() as f64, image.height() as f64);
    assert!(crop.left >= 0.0 && crop.left < w && crop.width > 0.0 && crop.left + crop.width <= w, "{crop:?} of {w}");
    assert!(crop.top >= 0.0 && crop.top < h && crop.height > 0.0 && crop.top + crop.height <= h, "{crop:?} of {h}");
    assert!(width > 0 && height > 0);
    nearest(image, crop, width, height)
}

const BLACK: [u8; 3] = [0, 0, 0];
const COLOURS: [[u8; 3]; 4] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]];

/// A black `w`×`h` image with each `(box, colour)` painted (pixels `x1..x2`, `y1..y2`), and the boxes, classed
/// by colour index.
fn painted(w: u32, h: u32, rects: &[([u32; 4], usize)]) -> (RgbImage, Vec<TargetBox>) {
    let mut image = RgbImage::from_pixel(w, h, Rgb(BLACK));
    let mut boxes = Vec::new();
    for &([x1, y1, x2, y2], colour) in rects {
        for y in y1..y2 {
            for x in x1..x2 {
                image.put_pixel(x, y, Rgb(COLOURS[colour]));
            }
        }
        boxes.push(TargetBox { bbox: [x1, y1, x2, y2].map(|v| v as f32), class: colour });
    }
    (image, boxes)
}

/// Checks that pixels and boxes agree for every colour index in `classes`: with a kept box, every pixel of that
/// colour has its centre in the box and every pixel whose centre is in the box has that colour; without one,
/// what shows of the colour is at most a [`MIN_BOX_PX`] sliver. Returns how many classes kept a box.
fn assert_agreement(canvas: &RgbImage, boxes: &[TargetBox], classes: &[usize], context: &str) -> usize {
    const EPS: f32 = 1e-3;
    let mut kept = 0;
    for &class in classes {
        let colour = COLOURS[class];
        let mine: Vec<&TargetBox> = boxes.iter().filter(|b| b.class == class).collect();
        assert!(mine.len() <= 1, "{context}: class {class} has {} boxes", mine.len());
        let mut extent = [u32::MAX, u32::MAX, 0, 0];
        for (x, y, p) in canvas.enumerate_pixels() {
            let (cx, cy) = (x as f32 + 0.5, y as f32 + 0.5);
            if p.0 == colour {
                extent = [extent[0].min(x), extent[1].min(y), extent[2].max(x + 1), extent[3].max(y + 1)];
                if let Some(b) = mine.first() {
                    let [x1, y1, x2, y2] = b.bbox;
                    assert!(
                        cx > x1 - EPS && cx < x2 + EPS && cy > y1 - EPS && cy < y2 + EPS,
                        "{context}: class {class} pixel ({x}, {y}) outside its box {:?}",
                        b.bbox
                    );
                }
            }
            if let Some(b) = mine.first() {
                let [x1, y1, x2, y2] = b.bbox;
                if cx > x1 + EPS && cx < x2 - EPS && cy > y1 + EPS && cy < y2 - EPS {
                    assert_eq!(p.0, colour, "{context}: pixel ({x}, {y}) inside the class {class} box {:?}", b.bbox);
                }
            }
        }
        if mine.is_empty() {
            if extent[0] != u32::MAX {
                let (w, h) = (extent[2] - extent[0], extent[3] - extent[1]);
                assert!(w <= 2 || h <= 2, "{context}: class {class} shows {w}x{h} pixels but lost its box");
            }
        } else {
            kept += 1;
        }
    }
    kept
}

fn config(f: impl FnOnce(&mut AugmentConfig)) -> AugmentConfig {
    let mut c = AugmentConfig::none();
    f(&mut c);
    c.validate().unwrap();
    c
}

#[test]
fn letterbox_geometry_follows_the_formula() {
    // (w, h, size) -> (rw, rh, ox, oy)
    let cases = [
        ((640, 480, 640), (640, 480, 0, 80)),  // landscape, no resize
        ((480, 640, 640), (480, 640, 80, 0)),  // portrait
        ((1000, 1000, 640), (640, 640, 0, 0)), // square, shrunk
        ((1920, 1080, 640), (640, 360, 0, 140)),
        ((1, 100, 640), (6, 640, 317, 0)), // 1×N: 6.4 px wide
        ((100, 1, 640), (640, 6, 0, 317)),
        ((1, 1, 33), (33, 33, 0, 0)), // enlarged
        ((3000, 10, 640), (640, 2, 0, 319)),
        ((1, 5000, 64), (1, 64, 31, 0)), // would round to 0: clamped to 1
        ((333, 517, 321), (207, 321, 57, 0)),
    ];
    for ((w, h, size), (rw, rh, ox, oy)) in cases {
        let p = letterbox_geometry(w, h, size);
        let scale = (size as f32 / w as f32).min(size as f32 / h as f32);
        assert_eq!(p.scale, scale, "{w}x{h} -> {size}");
        assert_eq!((p.resized_w, p.resized_h, p.offset_x, p.offset_y), (rw, rh, ox, oy), "{w}x{h} -> {size}: {p:?}");
        assert_eq!(p.resized_w, ((w as f32 * scale).round() as u32).clamp(1, size));
        assert_eq!(p.resized_h, ((h as f32 * scale).round() as u32).clamp(1, size));
        assert_eq!((p.offset_x, p.offset_y), ((size - p.resized_w) / 2, (size - p.resized_h) / 2));
    }
}

#[test]
fn letterbox_resizes_the_whole_image_once_and_pads_with_grey() {
    let image = RgbImage::from_pixel(200, 100, Rgb([255, 0, 0]));
    let calls = RefCell::new(Vec::new());
    let recording = |img: &RgbImage, crop: Crop, w: u32, h: u32| {
        calls.borrow_mut().push((crop, w, h));
        nearest(img, crop, w, h)
    };
    let (canvas, p) = letterbox(&image, 100, &recording);
    assert_eq!(*calls.borrow(), vec![(Crop::full(&image), 100, 50)]);
    assert_eq!((p.offset_x, p.offset_y, p.resized_w, p.resized_h), (0, 25, 100, 50));
    for (x, y, px) in canvas.enumerate_pixels() {
        let inside = (25..75).contains(&y);
        assert_eq!(px.0, if inside { [255, 0, 0] } else { [FILL; 3] }, "({x}, {y})");
    }
    let b = letterbox_box([0.0, 0.0, 200.0, 100.0], &p, 200, 100);
    assert_eq!(b, [0.0, 25.0, 100.0, 75.0]);
}

#[test]
fn boxes_round_trip_through_unletterbox() {
    let boxes: [[f32; 4]; 3] = [[0.0, 0.0, 1.0, 1.0], [10.5, 20.25, 300.0, 199.0], [0.1, 0.2, 0.3, 0.4]];
    for (w, h, size) in
        [(640, 480, 640), (480, 640, 320), (4000, 3000, 640), (333, 517, 321), (1, 200, 64), (37, 37, 640)]
    {
        let p = letterbox_geometry(w, h, size);
        for b in boxes {
            let b = [b[0].min(w as f32), b[1].min(h as f32), b[2].min(w as f32), b[3].min(h as f32)];
            let there = letterbox_box(b, &p, w, h);
            // x' = x · rw / w + ox, per axis.
            let expect_x = b[0] as f64 * p.resized_w as f64 / w as f64 + p.offset_x as f64;
            assert!((there[0] as f64 - expect_x).abs() < 1e-4, "{there:?}");
            let back = unletterbox_box(there, &p, w, h);
            for (a, z) in b.iter().zip(back) {
                assert!((a - z).abs() < 1e-3, "{w}x{h} -> {size}: {b:?} -> {there:?} -> {back:?}");
            }
        }
    }
    // Predictions reaching into the padding are clamped to the image.
    let p = letterbox_geometry(200, 100, 100);
    assert_eq!(unletterbox_box([-5.0, 0.0, 120.0, 100.0], &p, 200, 100), [0.0, 0.0, 200.0, 100.0]);
}

#[test]
fn no_augmentation_gives_exactly_the_letterbox() {
    let (image, boxes) = painted(90, 60, &[([10, 5, 40, 30], 0), ([50, 20, 89, 59], 1)]);
    let c = AugmentConfig::none();
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..5 {
        assert!(!needs_mosaic(&c, &mut rng));
        let (canvas, out) = augment(&[(&image, &boxes)], 64, &c, &mut rng, &nearest);
        let (lb, p) = letterbox(&image, 64, &nearest);
        assert_eq!(canvas, lb);
        assert_eq!(out, letterbox_boxes(&boxes, &p, 90, 60));
        let (eval, eval_boxes, eval_p) = eval_letterbox(&image, &boxes, 64, &nearest);
        assert_eq!((eval, eval_boxes, eval_p), (lb, out, p));
    }
}

#[test]
fn eval_letterbox_keeps_small_boxes_and_clips() {
    let image = RgbImage::new(1000, 500);
    let boxes = [
        TargetBox { bbox: [10.0, 10.0, 12.0, 12.0], class: 0 }, // 0.128 px on a 64 canvas
        TargetBox { bbox: [900.0, 100.0, 1100.0, 200.0], class: 1 },
        TargetBox { bbox: [5.0, 5.0, 5.0, 9.0], class: 2 }, // no area
    ];
    let (_, out, _) = eval_letterbox(&image, &boxes, 64, &nearest);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].bbox[2], 64.0); // clipped to the image's right edge
    let (_, trained) =
        augment(&[(&image, &boxes[..])], 64, &AugmentConfig::none(), &mut StdRng::seed_from_u64(0), &nearest);
    assert_eq!(trained.iter().map(|b| b.class).collect::<Vec<_>>(), vec![1]); // under 2 px: dropped in training
}

#[test]
fn hflip_mirrors_boxes_and_pixels() {
    let (image, boxes) = painted(64, 64, &[([5, 10, 20, 30], 0)]);
    let c = config(|c| c.hflip = 1.0);
    let (canvas, out) = augment(&[(&image, &boxes)], 64, &c, &mut StdRng::seed_from_u64(3), &nearest);
    assert_eq!(out, vec![TargetBox { bbox: [44.0, 10.0, 59.0, 30.0], class: 0 }]);
    assert_eq!(assert_agreement(&canvas, &out, &[0], "hflip"), 1);
    assert_eq!(canvas.get_pixel(44, 10).0, COLOURS[0]);
    assert_eq!(canvas.get_pixel(43, 10).0, BLACK);

    // Twice is the identity, channels included.
    let mut twice = RgbImage::from_fn(7, 3, |x, y| Rgb([x as u8, y as u8, 100 + x as u8]));
    let original = twice.clone();
    let mut b = [TargetBox { bbox: [1.0, 0.0, 2.5, 3.0], class: 4 }];
    hflip(&mut twice, &mut b);
    assert_eq!(twice.get_pixel(6, 0).0, [0, 0, 100]);
    assert_eq!(b[0].bbox, [4.5, 0.0, 6.0, 3.0]);
    hflip(&mut twice, &mut b);
    assert_eq!((twice, b[0].bbox), (original, [1.0, 0.0, 2.5, 3.0]));
}

#[test]
fn affine_crop_moves_pixels_and_boxes_together() {
    let rects = [([10, 5, 40, 30], 0), ([50, 20, 89, 59], 1), ([0, 40, 30, 60], 2), ([60, 0, 80, 10], 3)];
    let (image, boxes) = painted(90, 60, &rects);
    let c = config(|c| {
        c.scale = [0.5, 1.8];
        c.translate = 0.3;
        c.hflip = 0.5;
        c.min_visible = 0.0;
    });
    let (mut kept, mut cut) = (0, 0);
    for seed in 0..60 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (canvas, out) = augment(&[(&image, &boxes)], 64, &c, &mut rng, &nearest);
        assert_eq!(canvas.dimensions(), (64, 64));
        kept += assert_agreement(&canvas, &out, &[0, 1, 2, 3], &format!("seed {seed}"));
        cut += out.iter().filter(|b| b.bbox.iter().any(|&v| v == 0.0 || v == 64.0)).count();
    }
    assert!(kept > 100 && cut > 20, "kept {kept}, cut {cut}");

    // The public crop of any image (here not letterboxed first) behaves the same way.
    for seed in 0..20 {
        let (canvas, out) = random_affine_crop(&image, &boxes, 64, &c, &mut StdRng::seed_from_u64(seed), &nearest);
        assert_agreement(&canvas, &out, &[0, 1, 2, 3], &format!("random_affine_crop seed {seed}"));
    }
}

#[test]
fn affine_crop_scales_about_the_centre() {
    let (image, boxes) = painted(100, 100, &[([40, 40, 60, 60], 0)]);
    let crop = AffineCrop { scale: 2.0, shift_x: 10.0, shift_y: -5.0 };
    let (canvas, out) = affine_crop(&image, &boxes, 100, crop, 0.25, &nearest);
    // x' = (x - 50)·2 + 50 + shift.
    assert_eq!(out, vec![TargetBox { bbox: [40.0, 25.0, 80.0, 65.0], class: 0 }]);
    assert_agreement(&canvas, &out, &[0], "scale 2");
    let (canvas, out) = affine_crop(&image, &boxes, 100, AffineCrop::IDENTITY, 0.25, &nearest);
    assert_eq!((canvas, out), (image, boxes));
}

#[test]
fn boxes_cut_below_min_visible_are_dropped() {
    // Scaling a 100×100 image by 2 about its centre onto a 100 canvas shows source x in [25, 75].
    let boxes = [
        TargetBox { bbox: [0.0, 40.0, 50.0, 60.0], class: 0 }, // 25 of 50 visible: 0.5
        TargetBox { bbox: [0.0, 40.0, 40.0, 60.0], class: 1 }, // 15 of 40: 0.375
        TargetBox { bbox: [10.0, 40.0, 50.0, 60.0], class: 2 }, // 25 of 40: 0.625
        TargetBox { bbox: [30.0, 30.0, 70.0, 70.0], class: 3 }, // inside
        TargetBox { bbox: [0.0, 0.0, 20.0, 20.0], class: 4 },  // outside
        TargetBox { bbox: [74.5, 40.0, 80.0, 60.0], class: 5 }, // 1 canvas px visible: under MIN_BOX_PX
    ];
    let image = RgbImage::new(100, 100);
    let crop = AffineCrop { scale: 2.0, shift_x: 0.0, shift_y: 0.0 };
    let classes = |min_visible: f64| {
        let (_, out) = affine_crop(&image, &boxes, 100, crop, min_visible, &nearest);
        out.iter().map(|b| b.class).collect::<Vec<_>>()
    };
    assert_eq!(classes(0.4), vec![0, 2, 3]);
    assert_eq!(classes(0.3), vec![0, 1, 2, 3]);
    assert_eq!(classes(0.55), vec![2, 3]);
    assert_eq!(classes(0.0), vec![0, 1, 2, 3]);
    let (_, out) = affine_crop(&image, &boxes, 100, crop, 0.4, &nearest);
    assert_eq!(out[0].bbox, [0.0, 30.0, 50.0, 70.0]); // clipped at the canvas edge

    // The same through the config, and through a mosaic (cut at the mosaic's edge and by the crop).
    let c = config(|c| {
        c.scale = [2.0, 2.0];
        c.min_visible = 0.4;
    });
    let (_, out) = augment(&[(&image, &boxes[..])], 100, &c, &mut StdRng::seed_from_u64(0), &nearest);
    assert_eq!(out.iter().map(|b| b.class).collect::<Vec<_>>(), vec![0, 2, 3]);
    let blank = RgbImage::new(100, 100);
    let samples: [(&RgbImage, &[TargetBox]); 4] = [(&image, &boxes), (&blank, &[]), (&blank, &[]), (&blank, &[])];
    // Centre (100, 100), identity crop: sample 0 lies at [0, 0, 100, 100] of the 200 mosaic, the canvas shows
    // [50, 150]², i.e. source [50, 100]² of sample 0.
    let (_, out) = mosaic_at(&samples, 100, [100, 100], AffineCrop::IDENTITY, 0.4, &nearest);
    // Boxes 0-2 end at source x = 50: nothing visible. Box 3 [30, 70]²: 20 of 40 on each axis, 0.25 visible.
    // Box 5 [74.5, 80] × [40, 60]: all of x, half of y, 0.5 visible.
    let box5 = TargetBox { bbox: [24.5, 0.0, 30.0, 10.0], class: 5 };
    assert_eq!(out, vec![box5]);
    let (_, out) = mosaic_at(&samples, 100, [100, 100], AffineCrop::IDENTITY, 0.25, &nearest);
    assert_eq!(out, vec![TargetBox { bbox: [0.0, 0.0, 20.0, 20.0], class: 3 }, box5]);
}

#[test]
fn mosaic_places_the_four_samples_around_the_centre() {
    let a = RgbImage::from_pixel(100, 50, Rgb(COLOURS[0]));
    let b = RgbImage::from_pixel(50, 100, Rgb(COLOURS[1]));
    let c = RgbImage::from_pixel(20, 20, Rgb(COLOURS[2]));
    let d = RgbImage::from_pixel(300, 300, Rgb(COLOURS[3]));
    let scaled =
        |img: &RgbImage, class| [TargetBox { bbox: [0.0, 0.0, img.width() as f32, img.height() as f32], class }];
    let (ba, bb, bc, bd) = (scaled(&a, 0), scaled(&b, 1), scaled(&c, 2), scaled(&d, 3));
    let samples: [(&RgbImage, &[TargetBox]); 4] = [(&a, &ba), (&b, &bb), (&c, &bc), (&d, &bd)];
    // size 64, centre (70, 60), crop scale 0.5 about (64, 64): mosaic point p lands at (p - 64)/2 + 32.
    let crop = AffineCrop { scale: 0.5, shift_x: 0.0, shift_y: 0.0 };
    let (canvas, out) = mosaic_at(&samples, 64, [70, 60], crop, 0.0, &nearest);
    // Fitted sizes: a 64×32, b 32×64, c 64×64, d 64×64; b and d reach past the 128 mosaic and are cut there.
    let expect = [
        [70.0 - 64.0, 60.0 - 32.0, 70.0, 60.0],
        [70.0, 60.0 - 64.0, 70.0 + 32.0, 60.0],
        [70.0 - 64.0, 60.0, 70.0, 60.0 + 64.0],
        [70.0, 60.0, 70.0 + 64.0, 60.0 + 64.0],
    ]
    .map(|r: [f64; 4]| r.map(|v| ((v.clamp(0.0, 128.0) - 64.0) / 2.0 + 32.0) as f32));
    assert_eq!(out.iter().map(|b| b.bbox).collect::<Vec<_>>(), expect.to_vec());
    assert_eq!(assert_agreement(&canvas, &out, &[0, 1, 2, 3], "mosaic_at"), 4);
    assert_eq!(canvas.get_pixel(0, 0).0, [FILL; 3]); // the mosaic's grey corner
}

#[test]
fn mosaic_moves_pixels_and_boxes_together() {
    let (a, ba) = painted(90, 60, &[([10, 5, 40, 30], 0)]);
    let (b, bb) = painted(40, 80, &[([0, 50, 40, 80], 1)]);
    let (c, bc) = painted(64, 64, &[([20, 20, 44, 44], 2)]);
    let (d, bd) = painted(200, 120, &[([100, 0, 200, 60], 3)]);
    let samples: [(&RgbImage, &[TargetBox]); 4] = [(&a, &ba), (&b, &bb), (&c, &bc), (&d, &bd)];
    let cfg = config(|c| {
        c.scale = [0.4, 1.5];
        c.translate = 0.2;
        c.hflip = 0.5;
        c.mosaic = 1.0;
        c.min_visible = 0.0;
    });
    let mut kept = 0;
    for seed in 0..60 {
        let mut rng = StdRng::seed_from_u64(seed);
        assert!(needs_mosaic(&cfg, &mut rng));
        let (canvas, out) = augment(&samples, 64, &cfg, &mut rng, &nearest);
        assert_eq!(canvas.dimensions(), (64, 64));
        kept += assert_agreement(&canvas, &out, &[0, 1, 2, 3], &format!("mosaic seed {seed}"));
    }
    assert!(kept > 80, "kept {kept}");
}

#[test]
fn crops_handed_to_the_resizer_stay_inside_the_image() {
    let images = [RgbImage::new(1, 300), RgbImage::new(333, 517), RgbImage::new(640, 480), RgbImage::new(7, 3)];
    let boxes = [TargetBox { bbox: [0.0, 0.0, 1.0, 1.0], class: 0 }];
    let c = config(|c| {
        c.scale = [0.05, 4.0];
        c.translate = 1.0;
        c.hflip = 0.5;
    });
    for seed in 0..200 {
        let mut rng = StdRng::seed_from_u64(seed);
        let single = [(&images[seed as usize % 4], &boxes[..])];
        let (canvas, _) = augment(&single, 97, &c, &mut rng, &strict);
        assert_eq!(canvas.dimensions(), (97, 97));
        let four: Vec<(&RgbImage, &[TargetBox])> = images.iter().map(|i| (i, &boxes[..])).collect();
        augment(&four, 97, &c, &mut rng, &strict);
    }
}

#[test]
fn zero_hsv_gains_are_the_identity() {
    let mut rng = StdRng::seed_from_u64(9);
    let original = RgbImage::from_fn(50, 40, |_, _| Rgb([rng.random(), rng.random(), rng.random()]));
    let mut canvas = original.clone();
    apply_hsv(&mut canvas, HsvGains::NEUTRAL);
    assert_eq!(canvas, original);
    hsv_jitter(&mut canvas, &AugmentConfig::none(), &mut rng);
    assert_eq!(canvas, original);
    // Gains too small to change any table entry are the identity too.
    apply_hsv(&mut canvas, HsvGains { hue: 0.001, saturation: 1.001, value: 0.999 });
    assert_eq!(canvas, original);
}

#[test]
fn hsv_conversion_round_trips_closely() {
    let mut worst = 0;
    for r in (0..=255u32).step_by(3) {
        for g in (0..=255u32).step_by(5) {
            for b in (0..=255u32).step_by(7) {
                let rgb = [r as u8, g as u8, b as u8];
                let back = hsv_to_rgb(rgb_to_hsv(rgb));
                for (x, y) in rgb.iter().zip(back) {
                    worst = worst.max((*x as i32 - y as i32).abs());
                }
            }
        }
    }
    // Half a hue step (1/512 of the circle) is up to 3 levels on a saturated colour, plus rounding.
    assert!(worst <= 4, "worst round-trip error {worst}");
    for v in 0..=255u8 {
        assert_eq!(hsv_to_rgb(rgb_to_hsv([v; 3])), [v; 3]);
    }
    assert_eq!(rgb_to_hsv([255, 0, 0]), [0, 255, 255]);
    assert_eq!(rgb_to_hsv([0, 255, 0]), [85, 255, 255]);
    assert_eq!(rgb_to_hsv([0, 0, 255]), [171, 255, 255]);
    assert_eq!(rgb_to_hsv([255, 0, 10])[0], 254); // just below red wraps to the top of the circle
}

#[test]
fn hsv_gains_change_colours_as_described() {
    let one = |rgb: [u8; 3], gains: HsvGains| {
        let mut image = RgbImage::from_pixel(1, 1, Rgb(rgb));
        apply_hsv(&mut image, gains);
        image.get_pixel(0, 0).0
    };
    let g = |hue, saturation, value| HsvGains { hue, saturation, value };
    assert_eq!(one([200, 100, 50], g(0.0, 1.0, 0.5)), [100, 50, 25]);
    assert_eq!(one([200, 100, 50], g(0.0, 0.0, 1.0)), [200, 200, 200]);
    // A third of the circle is 85.3 hue steps: red becomes green (blue), up to the hue quantisation.
    let close = |a: [u8; 3], b: [u8; 3]| a.iter().zip(b).all(|(x, y)| (*x as i32 - y as i32).abs() <= 3);
    assert!(close(one([255, 0, 0], g(1.0 / 3.0, 1.0, 1.0)), [0, 255, 0]));
    assert!(close(one([255, 0, 0], g(-1.0 / 3.0, 1.0, 1.0)), [0, 0, 255]));
    assert_eq!(one([100, 100, 100], g(0.2, 1.5, 3.0)), [255, 255, 255]); // grey stays grey, value clamps
    let c = config(|c| c.hsv_v = 0.4);
    let mut rng = StdRng::seed_from_u64(4);
    let changed = (0..20).filter(|_| {
        let mut image = RgbImage::from_pixel(4, 4, Rgb([120, 80, 40]));
        hsv_jitter(&mut image, &c, &mut rng);
        image.get_pixel(0, 0).0 != [120, 80, 40]
    });
    assert!(changed.count() >= 15);
}

#[test]
fn the_same_seed_gives_the_same_sample() {
    let (a, ba) = painted(90, 60, &[([10, 5, 40, 30], 0), ([50, 20, 89, 59], 1)]);
    let (b, bb) = painted(40, 80, &[([0, 50, 40, 80], 2)]);
    let c = AugmentConfig::default();
    c.validate().unwrap();
    let run = |seed: u64, four: bool| {
        let mut rng = StdRng::seed_from_u64(seed);
        let samples: Vec<(&RgbImage, &[TargetBox])> =
            if four { vec![(&a, &ba), (&b, &bb), (&a, &ba), (&b, &bb)] } else { vec![(&a, &ba)] };
        augment(&samples, 64, &c, &mut rng, &nearest)
    };
    for four in [false, true] {
        assert_eq!(run(7, four), run(7, four));
        assert_ne!(run(7, four).0, run(8, four).0);
    }
}

#[test]
#[should_panic(expected = "1 sample or 4")]
fn augment_refuses_two_samples() {
    let image = RgbImage::new(8, 8);
    let samples: [(&RgbImage, &[TargetBox]); 2] = [(&image, &[]), (&image, &[])];
    augment(&samples, 8, &AugmentConfig::none(), &mut StdRng::seed_from_u64(0), &nearest);
}

#[test]
fn config_validation_names_the_problem() {
    AugmentConfig::default().validate().unwrap();
    AugmentConfig::none().validate().unwrap();
    let bad = |f: fn(&mut AugmentConfig), field: &str| {
        let mut c = AugmentConfig::default();
        f(&mut c);
        let e = c.validate().unwrap_err();
        assert!(e.contains(&format!("`{field}`")), "{e}");
    };
    bad(|c| c.hflip = 1.5, "hflip");
    bad(|c| c.mosaic = -0.1, "mosaic");
    bad(|c| c.translate = f64::NAN, "translate");
    bad(|c| c.min_visible = 2.0, "min_visible");
    bad(|c| c.hsv_h = -0.01, "hsv_h");
    bad(|c| c.hsv_s = 1.5, "hsv_s");
    bad(|c| c.hsv_v = f64::INFINITY, "hsv_v");
    bad(|c| c.scale = [1.5, 0.5], "scale");
    bad(|c| c.scale = [0.0, 1.0], "scale");
    bad(|c| c.scale = [0.5, f64::INFINITY], "scale");
    let c = AugmentConfig { scale: [1.5, 0.5], ..AugmentConfig::default() };
    assert!(c.validate().unwrap_err().contains("low <= high"));

    // Missing fields take the defaults; unknown ones are refused.
    let c: AugmentConfig = serde_json::from_str(r#"{"hflip": 0.0, "scale": [1.0, 2.0]}"#).unwrap();
    assert_eq!(c, AugmentConfig { hflip: 0.0, scale: [1.0, 2.0], ..AugmentConfig::default() });
    let e = serde_json::from_str::<AugmentConfig>(r#"{"flip": 0.5}"#).unwrap_err();
    assert!(e.to_string().contains("unknown field `flip`"), "{e}");
}
