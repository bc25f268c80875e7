/**
 * The one error a credential source fails the start with: a device registry or JWKS file that
 * cannot be read or is not what it should be, or credential settings that contradict each
 * other. It is configuration, not a fault of the gateway: Run.ts answers it like a bad variable
 * (one line `invalid configuration: …`, exit 78). This module imports nothing but `effect`, so
 * that Run.ts can know the tag without loading the credential code.
 */
import { Data } from "effect"

/** A credential source that cannot be used; `message` names the variable and what is wrong. */
export class AuthConfigError extends Data.TaggedError("AuthConfigError")<{
  readonly message: string
}> {}
