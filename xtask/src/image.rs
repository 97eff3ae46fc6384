//! `cargo xtask image`: the minimal container image of `pake` (deploy/Containerfile).
//!
//! The binary is built here, statically linked against musl, so the image needs nothing
//! beside it: no libc, no shell, no package manager. The engine only packs it: the build
//! context (`target/image/context`) holds the binary, the CA bundle the gateway trusts for
//! https upstreams, and an empty data directory. The first engine that answers is used
//! (podman, docker, buildah) unless `--engine` names one, and the image is also written as
//! an archive under `target/image/` that any engine or registry client loads.
//!
//! It does not push anywhere and does not run the image: a static binary that runs on this
//! host runs the same in the image, and the Kubernetes side is checked on the chart.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target whose binaries link statically with nothing but the toolchain's musl.
const TARGET: &str = "x86_64-unknown-linux-musl";
const ENGINES: [&str; 3] = ["podman", "docker", "buildah"];

pub struct Options {
    tag: String,
    engine: Option<String>,
}

impl Options {
    pub const USAGE: &str = "image [--tag NAME:TAG] [--engine podman|docker|buildah]";

    pub fn parse(arguments: &[&str]) -> Result<Options> {
        let mut options = Options { tag: format!("pake:{}", env!("CARGO_PKG_VERSION")), engine: None };
        let mut rest = arguments.iter();
        while let Some(argument) = rest.next() {
            let mut value = || rest.next().copied().with_context(|| format!("{argument} needs a value"));
            match *argument {
                "--tag" => options.tag = value()?.to_string(),
                "--engine" => {
                    let engine = value()?;
                    if !ENGINES.contains(&engine) {
                        bail!("unknown engine {engine} (podman, docker or buildah)");
                    }
                    options.engine = Some(engine.to_string());
                }
                other => bail!("unknown option {other}; usage: cargo xtask {}", Options::USAGE),
            }
        }
        Ok(options)
    }
}

pub fn build(root: &Path, options: &Options) -> Result<()> {
    let engine = match &options.engine {
        Some(engine) => engine.clone(),
        None => find_engine().context(
            "no container engine answers (podman info, docker info, buildah --version): install one, \
             e.g. `apt-get install buildah`",
        )?,
    };
    let binary = static_binary(root)?;
    let context = root.join("target/image/context");
    if context.exists() {
        std::fs::remove_dir_all(&context).with_context(|| format!("clearing {}", context.display()))?;
    }
    std::fs::create_dir_all(context.join("data"))?;
    std::fs::copy(&binary, context.join("pake")).context("copying the binary into the build context")?;
    let bundle = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"]
        .into_iter()
        .map(Path::new)
        .find(|path| path.is_file())
        .context("no CA bundle on this host (install ca-certificates)")?;
    std::fs::copy(bundle, context.join("ca-certificates.crt"))?;

    let containerfile = root.join("deploy/Containerfile");
    let mut command = Command::new(&engine);
    if engine == "buildah" {
        command.args(["bud", "--isolation", "chroot"]);
    } else {
        command.arg("build");
    }
    command.arg("--file").arg(&containerfile).args(["--tag", &options.tag]).arg(&context);
    run(&mut command)?;

    let (archive, save) = if engine == "docker" {
        let archive = root.join("target/image/pake.docker.tar");
        (archive.clone(), vec!["save".to_string(), "--output".into(), path_text(&archive)?, options.tag.clone()])
    } else {
        let archive = root.join("target/image/pake.oci.tar");
        let _ = std::fs::remove_file(&archive);
        (
            archive.clone(),
            vec!["push".to_string(), options.tag.clone(), format!("oci-archive:{}", path_text(&archive)?)],
        )
    };
    run(Command::new(&engine).args(&save))?;
    let megabytes = |path: &Path| std::fs::metadata(path).map(|m| m.len() as f64 / 1_048_576.0).unwrap_or(0.0);
    println!(
        "image {} built with {engine}: a static {TARGET} binary of {:.1} MiB, the archive {} ({:.1} MiB)",
        options.tag,
        megabytes(&binary),
        archive.display(),
        megabytes(&archive)
    );
    Ok(())
}

/// Builds `pake` for [`TARGET`] in release mode and checks that it is static and runs.
fn static_binary(root: &Path) -> Result<PathBuf> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    if let Ok(output) = installed
        && !String::from_utf8_lossy(&output.stdout).lines().any(|line| line.trim() == TARGET)
    {
        bail!("the {TARGET} target is missing: `rustup target add {TARGET}`");
    }
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.current_dir(root).args(["build", "--release", "--locked", "--package", "pake", "--target", TARGET]);
    // C code (mimalloc, SQLite, aws-lc) is compiled for musl by Debian's wrapper when the
    // cross compiler the cc crate looks for by default is absent.
    let cc_variable = format!("CC_{}", TARGET.replace('-', "_"));
    if std::env::var_os(&cc_variable).is_none() && on_path("musl-gcc") && !on_path("x86_64-linux-musl-gcc") {
        cargo.env(&cc_variable, "musl-gcc");
    }
    run(&mut cargo)
        .with_context(|| format!("building pake for {TARGET} (C code needs musl-gcc: apt-get install musl-tools)"))?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let binary = target_dir.join(TARGET).join("release/pake");
    let bytes = std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    if let Some(interpreter) = interpreter(&bytes)? {
        bail!("{} is dynamically linked (it asks for {interpreter})", binary.display());
    }
    let version = Command::new(&binary).arg("--version").output().context("running the static binary")?;
    if !version.status.success() {
        bail!("{} --version failed: {}", binary.display(), String::from_utf8_lossy(&version.stderr));
    }
    Ok(binary)
}

/// The program interpreter (dynamic loader) a 64-bit little-endian ELF file names in its
/// `PT_INTERP` header, if any: a static executable has none.
fn interpreter(elf: &[u8]) -> Result<Option<String>> {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        bail!("not a 64-bit little-endian ELF file");
    }
    let word = |at: usize, len: usize| -> Result<u64> {
        let bytes = elf.get(at..at + len).context("ELF header cut short")?;
        Ok(bytes.iter().rev().fold(0u64, |value, byte| value << 8 | u64::from(*byte)))
    };
    let (table, entry_size, entries) = (word(0x20, 8)? as usize, word(0x36, 2)? as usize, word(0x38, 2)? as usize);
    for index in 0..entries {
        let header = table + index * entry_size;
        if word(header, 4)? as u32 == PT_INTERP {
            let (offset, size) = (word(header + 8, 8)? as usize, word(header + 32, 8)? as usize);
            let path = elf.get(offset..offset + size).context("PT_INTERP outside the file")?;
            return Ok(Some(String::from_utf8_lossy(path).trim_end_matches('\0').to_string()));
        }
    }
    Ok(None)
}

fn find_engine() -> Option<String> {
    ENGINES.into_iter().map(str::to_string).find(|engine| {
        let probe = if engine == "buildah" { "--version" } else { "info" };
        Command::new(engine).arg(probe).output().is_ok_and(|output| output.status.success())
    })
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn path_text(path: &Path) -> Result<String> {
    path.to_str().map(str::to_string).with_context(|| format!("{} is not UTF-8", path.display()))
}

fn run(command: &mut Command) -> Result<()> {
    let status = command.status().with_context(|| format!("starting {:?}", command.get_program()))?;
    if !status.success() {
        bail!("{:?} failed ({status})", command.get_program());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::interpreter;

    /// A minimal ELF image: the file header and one program header of type `kind`
    /// pointing at `payload`.
    fn elf(kind: u32, payload: &[u8]) -> Vec<u8> {
        let mut file = vec![0u8; 64 + 56];
        file[..6].copy_from_slice(b"\x7fELF\x02\x01");
        file[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        file[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        file[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        file[64..68].copy_from_slice(&kind.to_le_bytes());
        file[72..80].copy_from_slice(&(120u64).to_le_bytes());
        file[96..104].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        file.extend_from_slice(payload);
        file
    }

    #[test]
    fn a_dynamic_executable_names_its_loader_and_a_static_one_none() {
        let dynamic = elf(3, b"/lib64/ld-linux-x86-64.so.2\0");
        assert_eq!(interpreter(&dynamic).unwrap().as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
        assert_eq!(interpreter(&elf(1, b"code")).unwrap(), None);
        assert!(interpreter(b"#!/bin/sh\n").is_err());
        // The test binary itself is linked against the host's libc.
        let this = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(interpreter(&this).unwrap().is_some_and(|path| path.contains("ld-")));
    }
}
