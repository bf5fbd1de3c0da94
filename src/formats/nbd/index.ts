/** The NBD wire format (pure codec, no I/O). */
export * from './constants.ts';
export * from './bytes.ts';
export * from './handshake.ts';
export * from './info.ts';
export * from './transmission.ts';
