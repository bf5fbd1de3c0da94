import { deriveVmKey } from '../../crypto/keys.ts';

/** The per-VM keys the monitor uses, all derived from the bundle's volume key (never stored). */
export interface VmKeys {
  identity: Buffer;
  command: Buffer;
  console: Buffer;
  integrity: Buffer;
}

export function deriveVmKeys(volumeKey: Buffer): VmKeys {
  return {
    identity: deriveVmKey(volumeKey, 'identity'),
    command: deriveVmKey(volumeKey, 'command'),
    console: deriveVmKey(volumeKey, 'console'),
    integrity: deriveVmKey(volumeKey, 'integrity'),
  };
}
