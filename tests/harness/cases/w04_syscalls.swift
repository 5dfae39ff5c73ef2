// category: seccomp
// name: raw system calls from Swift (syscall() through dlsym)
// safe-status: ok
import Glibc
typealias Sys = @convention(c) (Int, Int, Int, Int, Int, Int, Int) -> Int
let raw = unsafeBitCast(dlsym(nil, "syscall"), to: Sys.self)
let calls: [(String, Int, Int, Int)] = [
    ("unshare(CLONE_NEWUSER)", 272, 0x1000_0000, 0), ("ptrace(ATTACH, 1)", 101, 16, 1),
    ("mount", 165, 0, 0), ("bpf", 321, 0, 0), ("io_uring_setup", 425, 1, 0),
    ("keyctl", 250, 0, 0), ("setns", 308, 0, 0), ("perf_event_open", 298, 0, 0),
    ("userfaultfd", 323, 0, 0), ("init_module", 175, 0, 0),
]
for (name, number, a, b) in calls {
    let rc = raw(number, a, b, 0, 0, 0, 0)
    print(rc >= 0 ? "ESCAPED: \(name) returned \(rc)" : "BLOCKED: \(name) errno \(errno)")
}
