// category: filesystem
// name: host files and the toolchain's own files from Swift
// safe-status: ok
import Glibc
for path in ["/etc/shadow", "/root", "/home", "/proc/1/environ", "/var/lib/cellblock"] {
    let fd = open(path, O_RDONLY)
    print(fd >= 0 ? "ESCAPED: opened \(path)" : "BLOCKED: \(path) errno \(errno)")
}
for path in ["/etc/cellblock-escape-marker", "/opt/swift/cellblock-escape-marker", "/run/swift-module-cache/x"] {
    let fd = open(path, O_WRONLY | O_CREAT, 0o644)
    print(fd >= 0 ? "ESCAPED: created \(path)" : "BLOCKED: write \(path) errno \(errno)")
}
