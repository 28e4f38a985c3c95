//! The seccomp filter of every instance: an allow list of the system calls ordinary
//! programs make; everything else fails with EPERM.
//!
//! Kept out on purpose, beyond what the instance's missing capabilities refuse anyway:
//! io_uring (`io_uring_*`), the kernel keyring (`keyctl`, `add_key`, `request_key`),
//! `userfaultfd`, `bpf`, `perf_event_open`, `ptrace`, `mount`, `setns`, and any new
//! namespace: `clone` and `unshare` are allowed only without namespace flags (so no user
//! namespace either), and `clone3`, whose flags a filter cannot read, answers ENOSYS so
//! that libc falls back to `clone`. Only x86_64 calls are allowed (images are amd64 only).
//! Names the host's libseccomp does not know are skipped by runc.
//!
//! Under gVisor (`runsc --oci-seccomp`) the same filter is applied by gVisor's kernel, to
//! the calls the function makes to it. There every refusal is EPERM whatever errno the
//! filter names, so `clone3` would fail where libc and Rust's std only fall back to
//! `clone` on ENOSYS: for gVisor it is allowed (its namespaces are gVisor's own, never
//! the node's).

use fnrt_function::SandboxClass;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

/// errno of a refused call.
const EPERM: u32 = 1;
/// errno of `clone3`, so that callers fall back to `clone`.
const ENOSYS: u32 = 38;
/// CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET.
const NEW_NAMESPACES: u64 = 0x7E02_0000;

/// Allowed whatever their arguments.
const ALLOWED: &[&str] = &[
    // files and directories
    "access",
    "chdir",
    "chmod",
    "chown",
    "close",
    "close_range",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "getcwd",
    "getdents",
    "getdents64",
    "getxattr",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pread64",
    "preadv",
    "preadv2",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "rmdir",
    "sendfile",
    "setxattr",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "tee",
    "truncate",
    "umask",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vmsplice",
    "write",
    "writev",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "ioctl",
    "memfd_create",
    // asynchronous I/O of the old kind (not io_uring)
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_setup",
    "io_submit",
    // memory
    "brk",
    "madvise",
    "membarrier",
    "mincore",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mremap",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "remap_file_pages",
    // processes, threads and signals
    "arch_prctl",
    "capget",
    "capset",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "fork",
    "futex",
    "futex_waitv",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getresgid",
    "getresuid",
    "getrlimit",
    "getrusage",
    "getsid",
    "gettid",
    "getuid",
    "ioprio_get",
    "ioprio_set",
    "kill",
    "pause",
    "personality",
    "pidfd_open",
    "pidfd_send_signal",
    "prctl",
    "prlimit64",
    "restart_syscall",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "setsid",
    "setuid",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "tgkill",
    "tkill",
    "vfork",
    "wait4",
    "waitid",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "map_shadow_stack",
    // time
    "alarm",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "getitimer",
    "gettimeofday",
    "nanosleep",
    "setitimer",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    // waiting on descriptors
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "eventfd",
    "eventfd2",
    "pipe",
    "pipe2",
    "poll",
    "ppoll",
    "pselect6",
    "select",
    // sockets
    "accept",
    "accept4",
    "bind",
    "connect",
    "getpeername",
    "getsockname",
    "getsockopt",
    "listen",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setsockopt",
    "shutdown",
    "socket",
    "socketpair",
    // System V and POSIX IPC (the instance has its own IPC namespace)
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    // the machine
    "getrandom",
    "sysinfo",
    "uname",
];

/// The filter of every instance of `class`.
pub fn profile(class: SandboxClass) -> Result<LinuxSeccomp, oci_spec::OciSpecError> {
    let allow = |names: &[&str]| {
        LinuxSyscallBuilder::default()
            .names(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .action(LinuxSeccompAction::ScmpActAllow)
            .build()
    };
    let without_new_namespaces = LinuxSeccompArgBuilder::default()
        .index(0usize)
        .value(NEW_NAMESPACES)
        .value_two(0u64)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .build()?;
    let syscalls: Vec<LinuxSyscall> = vec![
        allow(ALLOWED)?,
        LinuxSyscallBuilder::default()
            .names(vec!["clone".to_string(), "unshare".to_string()])
            .action(LinuxSeccompAction::ScmpActAllow)
            .args(vec![without_new_namespaces])
            .build()?,
        match class {
            SandboxClass::Runc => LinuxSyscallBuilder::default()
                .names(vec!["clone3".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(ENOSYS)
                .build()?,
            SandboxClass::Gvisor => allow(&["clone3"])?,
        },
    ];
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .architectures(vec![Arch::ScmpArchX86_64])
        .syscalls(syscalls)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_the_exploit_chains_need_and_allows_servers() {
        for class in fnrt_function::sandbox::ALL {
            refuses_and_allows(class);
        }
        // clone3: ENOSYS under runc (libc falls back to clone, whose flags are checked);
        // allowed under gVisor, whose filter would turn ENOSYS into EPERM.
        let clone3 = |class| {
            let p = profile(class).expect("profile");
            p.syscalls()
                .iter()
                .flatten()
                .find(|s| s.names().contains(&"clone3".to_string()))
                .map(|s| s.action())
        };
        assert_eq!(clone3(SandboxClass::Runc), Some(LinuxSeccompAction::ScmpActErrno));
        assert_eq!(clone3(SandboxClass::Gvisor), Some(LinuxSeccompAction::ScmpActAllow));
    }

    fn refuses_and_allows(class: SandboxClass) {
        let p = profile(class).expect("profile");
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(EPERM));
        let listed: Vec<&str> =
            p.syscalls().iter().flatten().flat_map(|s| s.names()).map(String::as_str).collect();
        for denied in [
            "io_uring_setup",
            "io_uring_enter",
            "keyctl",
            "add_key",
            "request_key",
            "userfaultfd",
            "bpf",
            "perf_event_open",
            "ptrace",
            "mount",
            "setns",
            "pivot_root",
            "chroot",
        ] {
            assert!(!listed.contains(&denied), "{denied} is allowed");
        }
        for needed in ["accept4", "epoll_wait", "futex", "mmap", "execve", "clone", "openat"] {
            assert!(listed.contains(&needed), "{needed} is not allowed");
        }
        let mut seen = std::collections::HashSet::new();
        assert!(listed.iter().all(|n| seen.insert(*n)), "a name is listed twice");
    }
}
