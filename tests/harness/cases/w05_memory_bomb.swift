// category: resources
// name: memory bomb from Swift
// safe-status: memory_limit, killed
// timeout: 10
var keep = [[UInt8]]()
while true { keep.append([UInt8](repeating: 1, count: 1 << 20)) }
