import { Effect, Layer, Logger } from "effect"
import * as v8 from "node:v8"
import * as Gateway from "../src/Gateway.ts"
setInterval(() => {
  const m = process.memoryUsage(); const h = v8.getHeapStatistics()
  console.error(JSON.stringify({ rss: m.rss >> 20, heapUsed: m.heapUsed >> 20, heapTotal: m.heapTotal >> 20, ext: m.external >> 20, ab: m.arrayBuffers >> 20, total_heap: h.total_heap_size >> 20 }))
}, 1000).unref()
Effect.runFork(Layer.launch(Gateway.layer().pipe(Layer.provide(Logger.layer([Logger.consoleJson])))))
