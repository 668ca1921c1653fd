//! Grad-CAM (`kiln predict --gradcam`): on a classifier trained to tell coloured shapes apart, the map of an image
//! with one shape off-centre peaks on the shape; the CLI writes the overlays; a class the run does not have is
//! refused with the run's classes.

mod common;

use image::RgbImage;
use kiln_train::classify::gradcam::{gradcam, GradCamOptions};
use kiln_train::synthetic::{generate_shapes, Palette, ShapesSpec, CLASS_COLOURS};

#[test]
fn the_map_peaks_on_the_object_and_the_cli_writes_overlays() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    let spec = ShapesSpec {
        classes: 3,
        per_class: (30, 6, 0),
        size: 64,
        seed: 3,
        palette: Palette::ByClass,
        ..Default::default()
    };
    generate_shapes(&data, &spec).unwrap();
    let mut config = common::quick_config(&data, &dir.path().join("runs"), 6);
    config.batch = 16;
    config.augment.scale = [0.5, 1.0];
    let run = kiln_train::classify::train(&config).unwrap().run;

    // Grey images with one red disc (class 0's colour, "circle") centred in one quadrant, i.e. one cell of the
    // last stage's 2 x 2 map at 64 px: the map for "circle" must peak on that quadrant, wherever the disc is.
    let colour = CLASS_COLOURS[0].map(|v| v as u8);
    let disc = |cx: f32, cy: f32| {
        RgbImage::from_fn(64, 64, |x, y| {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            if dx * dx + dy * dy <= 12.0 * 12.0 {
                image::Rgb(colour)
            } else {
                image::Rgb([120, 122, 118])
            }
        })
    };
    let out = dir.path().join("cams");
    let options = GradCamOptions { class: Some("circle".into()), ..Default::default() };
    let mut path = dir.path().join("disc.png");
    for (i, centre) in [(16.0, 48.0), (48.0, 16.0), (48.0, 48.0)].into_iter().enumerate() {
        path = dir.path().join(format!("disc{i}.png"));
        disc(centre.0 as f32, centre.1 as f32).save(&path).unwrap();
        let cam = &gradcam(&run, &[path.clone()], &out, &options).unwrap()[0];
        assert_eq!((cam.class.as_str(), cam.index), ("circle", 0));
        assert_eq!((cam.map.len(), cam.map[0].len()), (2, 2), "stride 32 at 64 px");
        assert_eq!(cam.peak, centre, "the map peaks on the disc's quadrant: {:?}", cam.map);
        assert!(cam.overlay.is_file());
        assert_eq!(image::open(&cam.overlay).unwrap().width(), 64);
    }
    let cam = &gradcam(&run, &[path.clone()], &out, &options).unwrap()[0];
    // Without a named class, the predicted one is explained.
    let predicted = gradcam(&run, &[path.clone()], &out, &GradCamOptions::default()).unwrap();
    assert!(predicted[0].probability >= cam.probability - 1e-9, "the predicted class is the most probable");

    // The CLI: overlays for a named class, and an unknown class named with the run's classes.
    let run_arg = run.path.to_str().unwrap();
    let cli_out = dir.path().join("cli_cams");
    let (cli_arg, image_arg) = (cli_out.to_str().unwrap(), path.to_str().unwrap());
    let explain = |class: &str| {
        let args = ["predict", "--run", run_arg, "--gradcam", cli_arg, "--gradcam-class", class, image_arg];
        common::kiln(&args, dir.path())
    };
    let ok = explain("square");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(cli_out.join("disc2_gradcam.png").is_file());
    let bad = explain("hexagon");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && stderr.contains("hexagon") && stderr.contains("circle, square, triangle"),
        "{stderr}"
    );
}
