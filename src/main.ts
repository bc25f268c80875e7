/** The gateway process, with the user stages of GATEWAY_STAGES_FILE (none when unset). */
import { run } from "./Run.ts"

run()
