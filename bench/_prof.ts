import { spawn } from "node:child_process"
import { runLoad } from "./load.ts"
const child = spawn(process.execPath, ["--disable-warning=ExperimentalWarning", "--max-semi-space-size=" + (process.env.SEMI ?? "64"), ...(process.env.OLD ? ["--max-old-space-size=" + process.env.OLD] : []), ...(process.env.PROF ? ["--cpu-prof", "--cpu-prof-dir=/tmp/prof"] : []), process.env.MAIN ?? "src/main.ts"], { env: { ...process.env, GATEWAY_PORT: "0", GATEWAY_ADMIN_PORT: "0", GATEWAY_DATA_DIR: "/tmp/prof/data" + Date.now() }, stdio: ["ignore", "pipe", "inherit"] })
const port: number = await new Promise((res) => child.stdout!.on("data", (d: Buffer) => { const m = /"port":(\d+)/.exec(d.toString()); if (m) res(Number(m[1])) }))
const r = await runLoad({ port, connections: Number(process.env.CONNS ?? 50), window: Number(process.env.WIN ?? 256), rate: Number(process.env.RATE ?? 0), eventRatio: 0, durationMs: 6000, devicePrefix: "p" })
console.log(JSON.stringify(r))
const fs = await import("node:fs"); console.log(/VmHWM:\s+(\d+)/.exec(fs.readFileSync(`/proc/${child.pid}/status`, "utf8"))?.[1])
child.kill("SIGTERM"); await new Promise((r) => child.on("exit", r))
