// category: resources
// name: fork bomb from Swift (fork through Glibc)
// safe-status: ok, error, killed, timeout
// timeout: 5
import Glibc
var made = 0, refused = 0
for _ in 0..<300 {
    let pid = fork()
    if pid == 0 { sleep(30); exit(0) }
    if pid < 0 { refused += 1 } else { made += 1 }
}
print(refused > 0 ? "BLOCKED: \(refused) forks refused after \(made)" : "ESCAPED: \(made) processes")
