/**
 * Test support: cutting a byte stream into socket reads, as property tests of the framing
 * code need (every way TCP may split what a device wrote).
 */

/**
 * `buf` cut into chunks of `chunkSize` bytes, or, when `chunkSize` is 0, at the `cuts`
 * positions (reduced modulo the length + 1; repeats give empty chunks).
 */
export const cutInto = (buf: Buffer, cuts: ReadonlyArray<number>, chunkSize: number): Array<Buffer> => {
  const out: Array<Buffer> = []
  if (chunkSize > 0) {
    for (let i = 0; i < buf.length; i += chunkSize) out.push(buf.subarray(i, i + chunkSize))
    return out
  }
  const points = cuts.map((c) => c % (buf.length + 1)).sort((a, b) => a - b)
  let prev = 0
  for (const p of points) {
    out.push(buf.subarray(prev, p))
    prev = p
  }
  out.push(buf.subarray(prev))
  return out
}
