import type { Refusal } from '../../formats/protocol/command.ts';

/** A request the monitor refuses for a security reason; `code` is what the tenant is shown. */
export class RefusalError extends Error {
  override name = 'RefusalError';
  constructor(
    readonly code: Refusal,
    message: string,
  ) {
    super(`${code}: ${message}`);
  }
}
