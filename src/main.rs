use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "artifact-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator.
    Run(artifact_operator::operator::RunArgs),
    /// Write the CustomResourceDefinitions to a directory (or check that it is up to date).
    Crd {
        /// Directory to write the YAML files to.
        #[arg(long, default_value = "crds")]
        out_dir: PathBuf,
        /// Fail instead of writing when a file differs.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { out_dir, check } => write_crds(&out_dir, check),
        Command::Run(args) => {
            let runtime =
                tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("the tokio runtime starts");
            match runtime.block_on(artifact_operator::operator::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("artifact-operator: {message}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn write_crds(out_dir: &Path, check: bool) -> ExitCode {
    let mut stale = Vec::new();
    for (file, yaml) in artifact_operator::api::crd_files() {
        let path = out_dir.join(&file);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(yaml.as_str()) {
            continue;
        }
        if check {
            stale.push(path.display().to_string());
        } else if let Err(error) = std::fs::create_dir_all(out_dir).and_then(|()| std::fs::write(&path, yaml)) {
            eprintln!("failed to write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("out of date, run `artifact-operator crd`: {}", stale.join(", "));
        ExitCode::FAILURE
    }
}
