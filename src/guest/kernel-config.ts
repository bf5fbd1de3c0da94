/**
 * The kernel's /boot/config-VERSION: checks that the features the guest's boot path relies on
 * are built in, so a kernel that cannot boot this guest is refused at build time, not at boot.
 */

/** Option -> accepted values. Drivers that may be modules are handled by the module resolver. */
const REQUIRED: Record<string, readonly string[]> = {
  CONFIG_BLK_DEV_INITRD: ['y'],
  CONFIG_RD_GZIP: ['y'],
  CONFIG_DEVTMPFS: ['y'],
  CONFIG_TMPFS: ['y'],
  CONFIG_SERIAL_8250_CONSOLE: ['y'],
  CONFIG_ACPI: ['y'],
  CONFIG_SECURITYFS: ['y'],
  CONFIG_IMA: ['y'],
  CONFIG_EXT4_FS: ['y', 'm'],
};

export function parseKernelConfig(text: string): Map<string, string> {
  const options = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^(CONFIG_[A-Za-z0-9_]+)=(.*)$/.exec(line);
    if (m) options.set(m[1]!, m[2]!);
  }
  return options;
}

export function checkGuestKernelConfig(options: Map<string, string>): void {
  const missing = Object.entries(REQUIRED)
    .filter(([name, accepted]) => !accepted.includes(options.get(name) ?? 'n'))
    .map(([name, accepted]) => `${name}=${accepted.join('|')} (is ${options.get(name) ?? 'unset'})`);
  if (missing.length > 0) throw new Error(`this kernel cannot boot the demo guest; its config lacks: ${missing.join(', ')}`);
}
