/**
 * What the rest of vmseal may rely on about the demo guest: how to boot it and what it prints.
 * The disk reaches the guest as the first virtio-blk device, so its root is /dev/vda1.
 */

/**
 * console=ttyS0: boot log, ready marker and root shell on the first serial port.
 * ima_policy=tcb: IMA measures everything executed and everything root reads.
 * panic=-1: a kernel panic reboots at once, so QEMU run with -no-reboot exits instead of hanging.
 */
export const GUEST_CMDLINE = 'console=ttyS0 ima_policy=tcb panic=-1';

/** Printed on ttyS0, on a line of its own, once all services run and the root shell follows. */
export const GUEST_READY_MARKER = 'VMSEAL-GUEST-READY';

/** The initramfs prints `${INITRAMFS_FAILURE_MARKER}: reason` and powers off when it cannot boot. */
export const INITRAMFS_FAILURE_MARKER = 'VMSEAL-INITRAMFS-FAILED';

export const GUEST_HOSTNAME = 'vmseal-guest';

/** Prompt of the root shell on ttyS0. */
export const GUEST_PROMPT = `${GUEST_HOSTNAME}# `;

export const GUEST_ROOT_DEVICE = '/dev/vda1';

/** An unprivileged user (group of the same name and id); root reaches it with `su -s /bin/sh vmseal -c CMD`. */
export const GUEST_USER = { name: 'vmseal', uid: 1000, home: '/home/vmseal' } as const;
