/**
 * Kernel modules the guest's initramfs loads: which ones, where they are in the kernel package,
 * and in which order. Dependencies come from each module's own .modinfo `depends=` (read with
 * our ELF and modinfo parsers, not modinfo(8)), closed transitively and sorted so every module
 * follows what it needs. Modules built into the kernel (modules.builtin) are skipped.
 */
import { readdir, readFile } from 'node:fs/promises';
import { basename, join, relative } from 'node:path';
import { EM_X86_64, ET_REL, findSection, parseElf, sectionData } from '../formats/elf.ts';
import { normalizeModuleName, parseModinfo } from '../formats/modinfo.ts';
import { runTool } from './run-tool.ts';

export interface WantedModule {
  name: string;
  /** Absent both as a module and built in is fine (e.g. split out only in some kernels). */
  optional?: boolean;
}

/**
 * virtio PCI transport + block + console for the disk and a second console; ext4 for the root
 * (built in on Debian's cloud kernel, loaded when it is not); the ACPI button and evdev so a
 * QMP system_powerdown reaches acpid in the guest as a key event.
 */
export const GUEST_MODULES: readonly WantedModule[] = [
  { name: 'virtio_ring' },
  { name: 'virtio' },
  { name: 'virtio_pci_modern_dev', optional: true },
  { name: 'virtio_pci_legacy_dev', optional: true },
  { name: 'virtio_pci' },
  { name: 'virtio_blk' },
  { name: 'virtio_console' },
  { name: 'ext4' },
  { name: 'evdev' },
  { name: 'button' },
];

export interface ModuleIndex {
  /** Module name -> absolute path of its .ko or .ko.xz. */
  files: Map<string, string>;
  builtin: Set<string>;
}

export interface KernelModule {
  name: string;
  /** Where it came from, relative to the modules directory. */
  source: string;
  depends: string[];
  /** The uncompressed .ko, ready for insmod. */
  bytes: Uint8Array;
}

const MODULE_FILE = /\.ko(\.xz)?$/;
const MAX_MODULE_BYTES = 64 * 1024 * 1024;

function moduleNameOf(file: string): string {
  return normalizeModuleName(basename(file).replace(MODULE_FILE, ''));
}

async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await walk(p)));
    else if (e.isFile() && MODULE_FILE.test(e.name)) out.push(p);
  }
  return out;
}

export async function indexModules(modulesDir: string): Promise<ModuleIndex> {
  const files = new Map<string, string>();
  for (const path of await walk(modulesDir)) {
    const name = moduleNameOf(path);
    const other = files.get(name);
    if (other) throw new Error(`two modules named ${name}: ${relative(modulesDir, other)} and ${relative(modulesDir, path)}`);
    files.set(name, path);
  }
  const builtinList = await readFile(join(modulesDir, 'modules.builtin'), 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new Error(`cannot read modules.builtin in ${modulesDir}: ${err.message}`);
  });
  const builtin = new Set(
    builtinList
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '')
      .map(moduleNameOf),
  );
  return { files, builtin };
}

/** Reads one module (decompressing .ko.xz with xz) and checks it belongs to this kernel. */
export async function loadModule(name: string, path: string, modulesDir: string, kernelVersion: string): Promise<KernelModule> {
  const source = relative(modulesDir, path);
  const bytes = path.endsWith('.xz')
    ? (await runTool('xz', ['-dc', '--', path], { timeoutMs: 60_000, maxStdout: MAX_MODULE_BYTES })).stdout
    : await readFile(path);
  const what = `module ${name} (${source})`;
  let depends: string[];
  try {
    const elf = parseElf(bytes);
    if (elf.type !== ET_REL || elf.machine !== EM_X86_64) throw new Error('not an x86-64 relocatable ELF object');
    const section = findSection(elf, '.modinfo');
    if (!section) throw new Error('has no .modinfo section');
    const info = parseModinfo(sectionData(elf, section));
    if (info.name !== undefined && info.name !== name) throw new Error(`calls itself ${info.name}`);
    const built = info.vermagic?.split(' ')[0];
    if (built !== kernelVersion) throw new Error(`was built for kernel ${built ?? '(no vermagic)'}, not ${kernelVersion}`);
    depends = info.depends;
  } catch (err) {
    throw new Error(`${what}: ${(err as Error).message}`);
  }
  return { name, source, depends, bytes };
}

/**
 * Load order for `roots`: each module after all of its dependencies, otherwise in the order
 * first reached from `roots`. `graph` maps every module to its direct dependencies.
 */
export function sortModules(roots: readonly string[], graph: ReadonlyMap<string, readonly string[]>): string[] {
  const order: string[] = [];
  const done = new Set<string>();
  const path: string[] = [];
  const visit = (name: string) => {
    if (done.has(name)) return;
    const cycleAt = path.indexOf(name);
    if (cycleAt >= 0) throw new Error(`module dependency cycle: ${[...path.slice(cycleAt), name].join(' -> ')}`);
    const deps = graph.get(name);
    if (deps === undefined) {
      const parent = path[path.length - 1];
      throw new Error(parent ? `module ${parent} depends on ${name}, which is not available` : `module ${name} is not available`);
    }
    path.push(name);
    for (const dep of deps) visit(dep);
    path.pop();
    done.add(name);
    order.push(name);
  };
  for (const root of roots) visit(root);
  return order;
}

/** The modules to load, in load order, for the wanted set, skipping built-ins. */
export async function resolveModules(
  wanted: readonly WantedModule[],
  index: ModuleIndex,
  modulesDir: string,
  kernelVersion: string,
): Promise<KernelModule[]> {
  const roots: string[] = [];
  for (const w of wanted) {
    if (index.builtin.has(w.name)) continue;
    if (index.files.has(w.name)) roots.push(w.name);
    else if (!w.optional) throw new Error(`kernel ${kernelVersion} has ${w.name} neither built in nor as a module`);
  }
  const loaded = new Map<string, KernelModule>();
  const graph = new Map<string, string[]>();
  const queue = [...roots];
  while (queue.length > 0) {
    const name = queue.shift()!;
    if (graph.has(name)) continue;
    const path = index.files.get(name);
    if (!path) continue; // sortModules reports it with the module that needs it
    const mod = await loadModule(name, path, modulesDir, kernelVersion);
    loaded.set(name, mod);
    // A built-in dependency is already there; it is not an edge to load.
    const deps = mod.depends.filter((d) => !index.builtin.has(d));
    graph.set(name, deps);
    queue.push(...deps);
  }
  return sortModules(roots, graph).map((name) => loaded.get(name)!);
}
