/**
 * Test support: does an error or log line quote a file's contents? (Secrets must not reach logs.)
 */

/** The pieces of `text` (5 characters or more, blanks aside) that `message` quotes. */
export const echoed = (message: string, text: string): Array<string> => {
  const out = new Set<string>()
  for (let i = 0; i + 5 <= text.length; i++) {
    const piece = text.slice(i, i + 5)
    if (piece.trim().length === 5 && message.includes(piece)) out.add(piece)
  }
  return [...out]
}
