//! `kiln`: train vision models on libtorch, evaluate them, predict, and check the installation.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Every model this process opens finds ONNX Runtime in the deps directory kiln was built with (after
    // ORT_DYLIB_PATH and KILN_DEPS), whichever command or library call opens it.
    kiln_infer::runtime::set_default_deps(env!("KILN_DEFAULT_DEPS"));
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // Library errors already print their causes; add only the causes a message does not contain yet.
            let mut message = err.to_string();
            for cause in err.chain().skip(1) {
                let cause = cause.to_string();
                if !message.contains(&cause) {
                    message = format!("{message}: {cause}");
                }
            }
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
