//! Builds the web client and embeds it: compiles `conclave-web` for wasm32-unknown-unknown
//! (a nested cargo with its own target directory, `target/web`), runs wasm-bindgen-cli on it
//! (the version must equal the `wasm-bindgen` crate's in Cargo.lock), and writes
//! `$OUT_DIR/web_assets.rs`, which `include_bytes!`s the result and the files of
//! `crates/web/static/`.
//!
//! `CONCLAVE_WEB=require` makes a missing wasm target or wasm-bindgen-cli an error (CI sets
//! it); `CONCLAVE_WEB=skip` builds without the web client. Otherwise a build that cannot make
//! the web client warns and serves a page that says how to get it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest
        .ancestors()
        .nth(2)
        .expect("crates/conclave is two levels below the workspace")
        .to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    for dir in [
        "web/src",
        "web/static",
        "web/Cargo.toml",
        "client/src",
        "e2ee/src",
        "mls/src",
        "proto/src",
        "media-meta/src",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            root.join("crates").join(dir).display()
        );
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
    println!("cargo:rerun-if-env-changed=CONCLAVE_WEB");
    println!("cargo:rerun-if-env-changed=WASM_BINDGEN");

    let mode = std::env::var("CONCLAVE_WEB").unwrap_or_default();
    let result = if mode == "skip" {
        Err("CONCLAVE_WEB=skip".to_owned())
    } else {
        build_web(&root, &out)
    };
    let code = match result {
        Ok(files) => assets_source(&root, &files),
        Err(why) => {
            if mode == "require" {
                panic!("the web client could not be built: {why}");
            }
            println!("cargo:warning=building without the web client: {why}");
            "pub(crate) const BUILT: bool = false;\n\
             pub(crate) static ASSETS: &[conclave_server::web::WebAsset] = &[];\n"
                .to_owned()
        }
    };
    std::fs::write(out.join("web_assets.rs"), code).expect("OUT_DIR is writable");
}

/// The version of a package in Cargo.lock.
fn locked_version(root: &Path, name: &str) -> Option<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == format!("name = \"{name}\"") {
            let v = lines.next()?.trim().strip_prefix("version = \"")?;
            return Some(v.trim_end_matches('"').to_owned());
        }
    }
    None
}

fn wasm_bindgen_cli() -> PathBuf {
    if let Some(p) = std::env::var_os("WASM_BINDGEN") {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("CARGO_HOME")
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo").into_os_string()))
    {
        let p = Path::new(&home).join("bin").join("wasm-bindgen");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("wasm-bindgen")
}

fn build_web(root: &Path, out: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let want = locked_version(root, "wasm-bindgen").ok_or("no wasm-bindgen in Cargo.lock")?;
    let cli = wasm_bindgen_cli();
    let have = Command::new(&cli).arg("--version").output().map_err(|e| {
        format!(
            "wasm-bindgen-cli not found ({e}); install it with \
                 `cargo install wasm-bindgen-cli --version {want}`"
        )
    })?;
    let have = String::from_utf8_lossy(&have.stdout);
    if have.split_whitespace().nth(1) != Some(want.as_str()) {
        return Err(format!(
            "wasm-bindgen-cli is {}, the crate is {want}: `cargo install wasm-bindgen-cli --version {want}`",
            have.trim()
        ));
    }

    // The nested build gets its own target directory (no lock against the outer build) and
    // none of the outer build's compiler flags or wrappers (clippy, sanitizers).
    let target_root = out
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(|b| b.parent()?.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.join("target"));
    let target_dir = target_root.join("web");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args([
        "build",
        "--locked",
        "-p",
        "conclave-web",
        "--target",
        "wasm32-unknown-unknown",
        "--profile",
        "web",
        "--target-dir",
    ]);
    cmd.arg(&target_dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .output()
        .map_err(|e| format!("cannot run cargo for the wasm build: {e}"))?;
    if !status.status.success() {
        let err = String::from_utf8_lossy(&status.stderr);
        let tail: Vec<&str> = err.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let hint = if err.contains("wasm32-unknown-unknown")
            && err.contains("target may not be installed")
        {
            " (`rustup target add wasm32-unknown-unknown`)"
        } else {
            ""
        };
        return Err(format!("the wasm build failed{hint}:\n{}", tail.join("\n")));
    }
    let wasm = target_dir
        .join("wasm32-unknown-unknown")
        .join("web")
        .join("conclave_web.wasm");
    let pkg = out.join("web-pkg");
    let status = Command::new(&cli)
        .args(["--target", "web", "--no-typescript", "--out-dir"])
        .arg(&pkg)
        .arg(&wasm)
        .status()
        .map_err(|e| format!("cannot run wasm-bindgen: {e}"))?;
    if !status.success() {
        return Err(format!("wasm-bindgen failed on {}", wasm.display()));
    }
    // The module, its glue, and the glue's snippets (JavaScript that crates inline).
    let mut files = Vec::new();
    collect(&pkg, &pkg, &mut files)?;
    let static_dir = root.join("crates/web/static");
    let mut entries: Vec<_> = std::fs::read_dir(&static_dir)
        .map_err(|e| format!("{}: {e}", static_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    for p in entries {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("a static file name is not UTF-8")?
            .to_owned();
        files.push((name, p));
    }
    Ok(files)
}

fn collect(base: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) -> Result<(), String> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(base, &p, files)?;
        } else if p.extension().is_some_and(|e| e == "js" || e == "wasm") {
            let rel = p
                .strip_prefix(base)
                .map_err(|e| e.to_string())?
                .to_str()
                .ok_or("a generated file name is not UTF-8")?
                .replace('\\', "/");
            files.push((rel, p));
        }
    }
    Ok(())
}

fn mime(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") | Some("mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn assets_source(_root: &Path, files: &[(String, PathBuf)]) -> String {
    let mut s = String::from(
        "pub(crate) const BUILT: bool = true;\n\
         pub(crate) static ASSETS: &[conclave_server::web::WebAsset] = &[\n",
    );
    for (name, path) in files {
        s.push_str(&format!(
            "    conclave_server::web::WebAsset {{ path: {name:?}, mime: {:?}, body: include_bytes!({:?}) }},\n",
            mime(name),
            path.display().to_string()
        ));
    }
    s.push_str("];\n");
    s
}
