/** A LUKS header or metadata that is malformed, inconsistent, or uses something this code does not support. */
export class LuksFormatError extends Error {
  override readonly name = 'LuksFormatError';
}
