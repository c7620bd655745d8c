use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "artifact-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { out_dir, check } => write_crds(&out_dir, check),
    }
}

fn write_crds(out_dir: &std::path::Path, check: bool) -> std::process::ExitCode {
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
            return std::process::ExitCode::FAILURE;
        }
    }
    if stale.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        eprintln!("out of date, run `artifact-operator crd`: {}", stale.join(", "));
        std::process::ExitCode::FAILURE
    }
}
