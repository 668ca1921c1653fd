//! Knowledge distillation (`distill.teacher`, `kiln train --teacher`): a teacher equal to the student adds
//! nothing to the loss, another teacher does, a teacher of another variant trains a student, and a teacher of
//! other classes is refused by name.

mod common;

use kiln_train::engine::read_results;
use kiln_train::{classify, TrainConfig};

fn first_loss(config: &TrainConfig) -> f64 {
    let run = classify::train(config).unwrap().run;
    read_results(&run.results()).unwrap()[0].train_loss()
}

#[test]
fn a_teacher_equal_to_the_student_adds_a_zero_kl_and_another_one_does_not() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (16, 4, 4), 9);
    let mut teacher = common::quick_config(&data, &dir.path().join("runs"), 1);
    teacher.img_size = 32;
    teacher.name = Some("teacher".into());
    let teacher_run = classify::train(&teacher).unwrap().run;

    // The student starts from the teacher's weights (no drop-path, no BatchNorm: training-mode logits are the
    // teacher's) and takes one step with a tiny learning rate: its first batch's loss is the same with and
    // without the teacher.
    let mut student = teacher.clone();
    student.weights = Some(teacher_run.path.join("weights/best.safetensors"));
    student.limit_train_batches = Some(kiln_train::config::BatchLimit::Count(1));
    student.lr = 1e-9;
    student.test_split = 0.0;
    student.name = Some("plain".into());
    let plain = first_loss(&student);
    student.name = Some("distilled".into());
    student.distill.teacher = Some(teacher_run.path.clone());
    student.distill.weight = 5.0;
    let distilled = first_loss(&student);
    assert!((plain - distilled).abs() < 1e-5, "hard-label loss {plain}, with an equal teacher {distilled}");

    // A student of another variant, from scratch, learns from the teacher: the KL term adds to its loss.
    let mut other = teacher.clone();
    other.model = "convnext_femto".into();
    other.limit_train_batches = Some(kiln_train::config::BatchLimit::Count(1));
    other.name = Some("femto".into());
    let alone = first_loss(&other);
    other.distill.teacher = Some(teacher_run.path.clone());
    other.name = Some("femto-distilled".into());
    let taught = first_loss(&other);
    assert!(taught > alone + 1e-3, "a teacher that disagrees adds its KL: {alone} -> {taught}");
    let saved = TrainConfig::load(&dir.path().join("runs/classify/femto-distilled/config.yaml")).unwrap();
    assert_eq!(saved.distill.teacher.as_deref(), Some(teacher_run.path.as_path()));
}

#[test]
fn a_teacher_of_other_classes_is_refused_by_name() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (6, 2, 2), 10);
    let mut teacher = common::quick_config(&data, &dir.path().join("runs"), 1);
    teacher.img_size = 32;
    let teacher_run = classify::train(&teacher).unwrap().run;
    // A dataset with only two of the three classes.
    let two = dir.path().join("two");
    for split in ["train", "val", "test"] {
        for class in ["circle", "square"] {
            let from = data.join(split).join(class);
            let to = two.join(split).join(class);
            std::fs::create_dir_all(&to).unwrap();
            for entry in std::fs::read_dir(&from).unwrap() {
                let path = entry.unwrap().path();
                std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    let mut student = common::quick_config(&two, &dir.path().join("runs"), 1);
    student.img_size = 32;
    student.distill.teacher = Some(teacher_run.path.clone());
    let err = classify::train(&student).unwrap_err().to_string();
    assert!(err.contains("distill.teacher") && err.contains("other classes") && err.contains("triangle"), "{err}");
    // Through the CLI, a directory that is no run is named.
    let out = common::kiln(
        &["train", "--data", two.to_str().unwrap(), "--teacher", dir.path().to_str().unwrap(), "--epochs", "1"],
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(dir.path().to_str().unwrap()), "{stderr}");
}
