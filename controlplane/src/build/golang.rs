//! go119: the user's Go module (go.mod at the zip's root, its root package exporting the
//! handler, a `func(http.ResponseWriter, *http.Request)` as Scaleway's Go runtime takes
//! it) compiled at deploy with Debian's Go (`go` on the control plane's PATH, package
//! golang-go) into a static binary that serves 0.0.0.0:9000 and calls the handler for
//! every request. It runs as the custom runtime's `scf_bootstrap`.
//!
//! The build runs no user code: cgo is off, there is no module proxy and no network (the
//! standard library only: a module that requires others fails to build; the user's
//! module is not the main module, so its vendor directory is not read either), the
//! toolchain is the local one, and it has `BUILD_TIMEOUT` and bounded output.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::code::BadCode;

/// The longest a build may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);
/// How much of the compiler's output an error keeps.
const MAX_OUTPUT: usize = 4096;

/// The `go` the control plane builds with, if there is one on its PATH.
pub fn toolchain() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("go")).find(|p| p.is_file())
}

/// The module path `go.mod` declares.
fn module_path(go_mod: &str) -> Result<String, BadCode> {
    let path = go_mod
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("module "))
        .map(|m| m.trim().trim_matches('"').to_string())
        .unwrap_or_default();
    let ok = !path.is_empty()
        && path.len() <= 256
        && path.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '-' | '_' | '~'));
    if ok {
        Ok(path)
    } else {
        Err(BadCode("go.mod must declare the module's path (a line `module example.com/myfunc`)".into()))
    }
}

fn wrapper(module: &str, handler: &str) -> String {
    format!(
        "// Made by fnrt: serves the function's handler on 0.0.0.0:9000.\n\
         package main\n\n\
         import (\n\t\"log\"\n\t\"net/http\"\n\n\tfunction \"{module}\"\n)\n\n\
         func main() {{\n\
         \thttp.HandleFunc(\"/\", function.{handler})\n\
         \tlog.Fatal(http.ListenAndServe(\"0.0.0.0:9000\", nil))\n\
         }}\n"
    )
}

/// Compiles the module unpacked in `src` with handler `handler` (its exported function);
/// the binary, in `work`. `cache` keeps the compiler's cache between builds.
pub async fn compile(src: &Path, work: &Path, cache: &Path, handler: &str) -> Result<PathBuf, BadCode> {
    let go = toolchain().ok_or_else(|| {
        BadCode(
            "the control plane has no Go toolchain to build go119 code with: install Debian's golang-go"
                .into(),
        )
    })?;
    let go_mod = std::fs::read_to_string(src.join("go.mod")).map_err(|e| BadCode(format!("go.mod: {e}")))?;
    let module = module_path(&go_mod)?;
    let main = work.join("main");
    let io = |e: std::io::Error| BadCode(format!("preparing the Go build: {e}"));
    std::fs::create_dir_all(&main).map_err(io)?;
    std::fs::write(main.join("main.go"), wrapper(&module, handler)).map_err(io)?;
    let src_abs = src.canonicalize().map_err(io)?;
    std::fs::write(
        main.join("go.mod"),
        format!(
            "module fnrt.invalid/main\n\ngo 1.19\n\nrequire {module} v0.0.0\n\nreplace {module} => {}\n",
            src_abs.display()
        ),
    )
    .map_err(io)?;
    let out = work.join("scf_bootstrap");
    let home = work.join("home");
    std::fs::create_dir_all(&home).map_err(io)?;
    let mut cmd = tokio::process::Command::new(go);
    cmd.current_dir(&main)
        .args(["build", "-trimpath", "-ldflags=-s -w", "-o"])
        .arg(&out)
        .arg(".")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &home)
        .env("GOPATH", work.join("gopath"))
        .env("GOCACHE", cache)
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("GONOSUMDB", "*")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .env("GOOS", "linux")
        .env("GOARCH", "amd64")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let run = tokio::time::timeout(BUILD_TIMEOUT, cmd.output()).await.map_err(|_| {
        BadCode(format!("the Go build took more than {} s and was stopped", BUILD_TIMEOUT.as_secs()))
    })?;
    let output = run.map_err(|e| BadCode(format!("go build could not run: {e}")))?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr);
        let text = text.replace(&src_abs.display().to_string(), ".");
        let tail: String =
            text.chars().rev().take(MAX_OUTPUT).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(BadCode(format!(
            "go build failed (go119 builds with Go 1.19 and the standard library only): {}",
            tail.trim()
        )));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_module_path_comes_from_go_mod() {
        assert_eq!(module_path("// x\nmodule example.com/f\n\ngo 1.19\n").unwrap(), "example.com/f");
        assert!(module_path("go 1.19\n").is_err());
        assert!(module_path("module a b;c\n").is_err());
    }
}
