//! The code runtimes: one table that validation, the runtimes list, the build and the
//! allowed registries all read. Each runs on a base image built from Debian's packages
//! (scripts/lib.sh, `runtimes/`); Go code is compiled at deploy and runs on the custom
//! runtime's base.

/// One runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runtime {
    /// Its name on the API (Scaleway's).
    pub name: &'static str,
    /// The language shown by `/runtimes`.
    pub language: &'static str,
    /// The version shown.
    pub version: &'static str,
    /// The handler when none is given.
    pub default_handler: &'static str,
    /// Its base image (`runtime-<base>`).
    pub base: &'static str,
}

/// Every code runtime.
pub const RUNTIMES: &[Runtime] = &[
    Runtime {
        name: "python311",
        language: "Python",
        version: "3.11",
        default_handler: "handler.handle",
        base: "python311",
    },
    Runtime {
        name: "node18",
        language: "Node",
        version: "18",
        default_handler: "handler.handle",
        base: "node18",
    },
    Runtime { name: "go119", language: "Go", version: "1.19", default_handler: "Handle", base: "custom" },
    Runtime {
        name: "custom",
        language: "Custom",
        version: "",
        default_handler: "scf_bootstrap",
        base: "custom",
    },
];

/// The runtime named `name`.
pub fn find(name: &str) -> Option<&'static Runtime> {
    RUNTIMES.iter().find(|r| r.name == name)
}

/// Their names, for errors and checks.
pub fn names() -> Vec<&'static str> {
    RUNTIMES.iter().map(|r| r.name).collect()
}
