//! The command line: one module per command.

mod bench;
mod bench_train;
mod demo;
mod doctor;
mod eval;
mod export;
mod infer;
mod infer_detect;
mod infer_ocr;
mod launch;
mod output;
mod predict;
mod raw;
mod seconds;
mod study;
mod train;

use clap::{Parser, Subcommand};

/// Train vision models on libtorch and ship them as ONNX.
#[derive(Parser, Debug)]
#[command(name = "kiln", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model (or continue one with --resume).
    Train(Box<train::TrainArgs>),
    /// Evaluate a run's checkpoint on the validation split.
    Val(eval::EvalArgs),
    /// Evaluate a run's checkpoint on the test split.
    Test(eval::EvalArgs),
    /// Export a run's checkpoint (`kiln export onnx --run DIR`).
    #[command(subcommand)]
    Export(export::ExportFormat),
    /// Classify images with a run's checkpoint (libtorch).
    Predict(predict::PredictArgs),
    /// Classify images with an exported ONNX model (ONNX Runtime or tract).
    Infer(infer::InferArgs),
    /// Latency and throughput of an ONNX model per backend and batch size.
    Bench(bench::BenchArgs),
    /// Inspect hyperparameter studies (`kiln study show --storage sqlite:///study.db`).
    #[command(subcommand)]
    Study(study::StudyCommand),
    /// Show the libtorch, CUDA and ONNX Runtime this kiln uses.
    Doctor,
    /// Generate a procedural data set, train convnext_atto on it and test it.
    Demo(demo::DemoArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => train::run(*args),
        Command::Val(args) => eval::run(args, kiln_train::data::Split::Val),
        Command::Test(args) => eval::run(args, kiln_train::data::Split::Test),
        Command::Export(format) => export::run(format),
        Command::Predict(args) => predict::run(args),
        Command::Infer(args) => infer::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Study(command) => study::run(command),
        Command::Doctor => doctor::run(),
        Command::Demo(args) => demo::run(args),
    }
}
