//! Embeds the default collector payload (`payload/` in this crate) in the
//! binary, so that `pushrun` with no payload argument works from a single
//! file. Every file under `payload/` is embedded, nothing is excluded; the
//! manifest and digest are computed from these bytes at run time by
//! `Payload::builtin()`, with the same rules as for a payload on disk.
//!
//! Output: `$OUT_DIR/builtin_payload.rs`, a sorted
//! `&[(&str /* path */, u32 /* mode */, &[u8] /* bytes */)]`.
//!
//! Also writes the remote scripts (`src/remote/*.sh`, `src/relay/*.sh`) as
//! they are sent to hosts, to `$OUT_DIR/remote/` and `$OUT_DIR/relay/`:
//! without their comment lines and blank lines, which every host would
//! otherwise read (a byte per read call where the shell reads them itself)
//! on every command. `login.sh` and `exec.sh` are also written joined
//! into one line (`exec.line`): it is sent as the command line itself.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn main() {
    let crate_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = crate_dir.join("payload");
    println!("cargo:rerun-if-changed=payload");

    let mut files = Vec::new();
    let mut ancestors = Vec::new();
    walk(&root, "", &mut ancestors, &mut files);
    files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));

    match files.iter().find(|f| f.0 == "run") {
        None => fail(
            &root.join("run"),
            "the builtin payload needs an executable run file",
        ),
        Some(f) if f.1 != 0o755 => fail(&f.2, "entry point is not executable (chmod +x)"),
        Some(_) => {}
    }

    let mut out = String::from(
        "/// Files of the default collector payload, embedded by build.rs: \
         (path, mode, bytes), sorted by path.\n\
         static BUILTIN_FILES: &[(&str, u32, &[u8])] = &[\n",
    );
    for (rel, mode, abs) in &files {
        println!("cargo:rerun-if-changed={}", abs.display());
        let abs = abs
            .to_str()
            .unwrap_or_else(|| fail(abs, "path is not valid UTF-8"));
        writeln!(out, "    ({rel:?}, 0o{mode:o}, include_bytes!({abs:?})),").unwrap();
    }
    out.push_str("];\n");

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    fs::write(out_dir.join("builtin_payload.rs"), out).expect("writing builtin_payload.rs");

    for dir in ["remote", "relay"] {
        strip_scripts(&crate_dir.join("src").join(dir), &out_dir.join(dir));
    }
    join_lines(&out_dir.join("remote"));
}

/// Writes each `.sh` file of `from` into `to` without its comment lines
/// (first non-blank character `#`) and blank lines. Lines inside a
/// here-document or a quoted string that look so go too: the scripts keep
/// no such data (their tests run what is sent).
fn strip_scripts(from: &Path, to: &Path) {
    println!("cargo:rerun-if-changed={}", from.display());
    fs::create_dir_all(to).unwrap_or_else(|e| fail(to, &e.to_string()));
    let read = fs::read_dir(from).unwrap_or_else(|e| fail(from, &e.to_string()));
    for item in read {
        let path = item.unwrap_or_else(|e| fail(from, &e.to_string())).path();
        if path.extension().is_none_or(|e| e != "sh") {
            continue;
        }
        println!("cargo:rerun-if-changed={}", path.display());
        let text = fs::read_to_string(&path).unwrap_or_else(|e| fail(&path, &e.to_string()));
        let mut kept = String::with_capacity(text.len());
        for line in text.lines() {
            let t = line.trim_start();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            kept.push_str(line);
            kept.push('\n');
        }
        let name = path.file_name().expect("a file name");
        fs::write(to.join(name), kept).unwrap_or_else(|e| fail(to, &e.to_string()));
    }
}

/// Writes `NAME.line` in `dir` (the stripped remote scripts) for each of
/// [`ONE_LINE`]: its scripts, in order, joined into one line.
fn join_lines(dir: &Path) {
    for (line_name, parts) in ONE_LINE {
        let mut text = String::new();
        for part in *parts {
            let path = dir.join(part);
            text.push_str(
                &fs::read_to_string(&path).unwrap_or_else(|e| fail(&path, &e.to_string())),
            );
        }
        let line = one_line(&text).unwrap_or_else(|why| fail(&dir.join(line_name), why));
        fs::write(dir.join(line_name), line).unwrap_or_else(|e| fail(dir, &e.to_string()));
    }
}

/// Lines made of stripped scripts, in order (`NAME.line`): sent as the
/// command line itself (remote/exec.sh, after login.sh).
const ONE_LINE: &[(&str, &[&str])] = &[("exec.line", &["login.sh", "exec.sh"])];

/// `script`'s lines joined by spaces: each must end a command itself (`;`,
/// `then`, `do`, ...). The line becomes one single-quoted word that every
/// login shell passes on unchanged, so it may hold no single quote, no
/// backslash (fish) and no `!` (csh's history).
fn one_line(script: &str) -> Result<String, &'static str> {
    let line = script.lines().map(str::trim).collect::<Vec<_>>().join(" ");
    if line.contains(['\'', '\\', '!']) {
        return Err("a one-line script may hold no single quote, backslash or !");
    }
    Ok(line)
}

/// Collects `(relative path, normalized mode, absolute path)` of every file
/// under `dir`. Symlinks are followed (include_bytes! reads the target);
/// `ancestors` holds the canonical directories being walked, against loops.
fn walk(
    dir: &Path,
    prefix: &str,
    ancestors: &mut Vec<PathBuf>,
    files: &mut Vec<(String, u32, PathBuf)>,
) {
    let real = fs::canonicalize(dir).unwrap_or_else(|e| fail(dir, &e.to_string()));
    if ancestors.contains(&real) {
        fail(dir, "symlink loop");
    }
    ancestors.push(real);
    let read = fs::read_dir(dir).unwrap_or_else(|e| fail(dir, &e.to_string()));
    for item in read {
        let item = item.unwrap_or_else(|e| fail(dir, &e.to_string()));
        let path = item.path();
        let name = item.file_name();
        let Some(name) = name.to_str() else {
            fail(&path, "file name is not valid UTF-8")
        };
        if name.contains(['\n', '\r', '\\']) {
            fail(
                &path,
                "file name with a newline or backslash is not supported",
            );
        }
        let rel = format!("{prefix}{name}");
        let meta = fs::metadata(&path).unwrap_or_else(|e| fail(&path, &e.to_string()));
        if meta.is_dir() {
            walk(&path, &format!("{rel}/"), ancestors, files);
        } else if meta.is_file() {
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            files.push((rel, mode, path));
        } else {
            fail(&path, "not a regular file or directory");
        }
    }
    ancestors.pop();
}

fn fail(path: &Path, msg: &str) -> ! {
    panic!("{}: {msg}", path.display())
}
