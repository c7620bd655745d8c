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
    /// Inside a workload pod, with a Stack's ConfigMap as environment: prove that the pod's own
    /// identity can write, read, list and delete under the store's path. Exits 1 on failure.
    Check(artifact_operator::check::CheckArgs),
    /// Write the CustomResourceDefinitions to a directory (or check that it is up to date).
    Crd {
        /// Directory to write the YAML files to.
        #[arg(long, default_value = "crds")]
        out_dir: PathBuf,
        /// Fail instead of writing when a file differs.
        #[arg(long)]
        check: bool,
    },
    /// Write what derives from the reasons (the Argo CD health scripts and the README's table of
    /// reasons), run from the repository's root; or check that it is up to date.
    Generate {
        /// Fail instead of writing when a file differs.
        #[arg(long)]
        check: bool,
        /// Also write the health scripts' test fixtures to this directory (even with --check).
        #[arg(long)]
        fixtures: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { out_dir, check } => write_crds(&out_dir, check),
        Command::Generate { check, fixtures } => generate(check, fixtures.as_deref()),
        Command::Check(args) => {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("the tokio runtime starts");
            runtime.block_on(artifact_operator::check::run(args))
        }
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
    let files: Vec<(PathBuf, String)> =
        artifact_operator::api::crd_files().into_iter().map(|(file, yaml)| (out_dir.join(file), yaml)).collect();
    write_all(&files, check, "artifact-operator crd")
}

/// Writes each file whose content differs; with `check`, writes nothing and fails naming them.
fn write_all(files: &[(PathBuf, String)], check: bool, command: &str) -> ExitCode {
    let mut stale = Vec::new();
    for (path, content) in files {
        if std::fs::read_to_string(path).ok().as_deref() == Some(content.as_str()) {
            continue;
        }
        if check {
            stale.push(path.display().to_string());
            continue;
        }
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if let Err(error) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(path, content)) {
            eprintln!("failed to write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("out of date, run `{command}`: {}", stale.join(", "));
        ExitCode::FAILURE
    }
}

fn generate(check: bool, fixtures: Option<&Path>) -> ExitCode {
    use artifact_operator::generate::{self, README_BEGIN, README_END};
    use artifact_operator::reason::Kind;
    let mut files: Vec<(PathBuf, String)> = Kind::ALL
        .iter()
        .map(|&kind| (generate::health_script_file(kind).into(), generate::health_script(kind)))
        .collect();
    let readme = std::fs::read_to_string("README.md").unwrap_or_default();
    match generate::with_readme_table(&readme) {
        Some(updated) => files.push(("README.md".into(), updated)),
        None => {
            eprintln!("README.md has no lines {README_BEGIN:?} and {README_END:?} to put the reasons between");
            return ExitCode::FAILURE;
        }
    }
    if let Some(dir) = fixtures {
        let fixtures: Vec<(PathBuf, String)> = generate::health_fixtures()
            .into_iter()
            .map(|(name, fixture)| {
                (dir.join(name), format!("{}\n", serde_json::to_string_pretty(&fixture).expect("JSON serializes")))
            })
            .collect();
        if write_all(&fixtures, false, "") != ExitCode::SUCCESS {
            return ExitCode::FAILURE;
        }
    }
    write_all(&files, check, "artifact-operator generate")
}
