// category: network
// name: TCP to the host loopback and the internet from Swift
// safe-status: ok
import Glibc
func reach(_ host: String, _ port: UInt16) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { print("BLOCKED: no socket for \(host) (errno \(errno))"); return }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    inet_pton(AF_INET, host, &addr.sin_addr)
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    print(rc == 0 ? "ESCAPED: connected to \(host)" : "BLOCKED: \(host) errno \(errno)")
    close(fd)
}
reach("127.0.0.1", {{HOST_TCP_PORT}})
reach("1.1.1.1", 443)
