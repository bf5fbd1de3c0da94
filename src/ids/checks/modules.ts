/**
 * Loaded modules and hidden modules: cross-view of the `modules` list against module_kset (the
 * kobjects behind /sys/module). Unlinking a module from `modules` hides it from lsmod and
 * /proc/modules but leaves its kobject; deleting the kobject hides it from sysfs only.
 * Built-in modules have kobjects without a `struct module` (mod == NULL) and are not compared.
 */
import type { KernelView } from '../kernel/kernel-view.ts';
import type { Kset, Module, ModuleKobject } from '../kernel/linux-types.ts';
import { hex, type Alert, type Check } from './check.ts';

export interface ModuleRow {
  name: string;
  addr: string;
  state: number;
}

export async function listModules(k: KernelView): Promise<{ listed: Map<bigint, string>; states: Map<bigint, number>; kobjects: Map<bigint, bigint> }> {
  const [mods, ksetPtr] = await Promise.all([k.list<Module>(k.sym('modules'), 'module', 'list'), k.ptrVar<Kset>('module_kset', 'kset')]);
  const kset = await ksetPtr.deref();
  const mks = await k.list<ModuleKobject>(kset.list, 'module_kobject', 'kobj.entry');
  return {
    listed: new Map(mods.map((m) => [m.$addr, m.name])),
    states: new Map(mods.map((m) => [m.$addr, m.state])),
    kobjects: new Map(mks.filter((mk) => !mk.mod.isNull).map((mk) => [mk.mod.addr, mk.$addr])),
  };
}

export function modulesCheck(): Check<ModuleRow[]> {
  return {
    name: 'modules',
    async scan(k) {
      const { listed, states, kobjects } = await listModules(k);
      const alerts: Alert[] = [];
      const hidden = [...kobjects.keys()].filter((m) => !listed.has(m));
      const hiddenMods = await k.atAll<Module>('module', hidden);
      for (const m of hiddenMods)
        alerts.push({
          check: 'modules',
          kind: 'hidden-module',
          message: `hidden module: ${m.name} is in /sys/module (module_kset) but not on the modules list`,
          evidence: { name: m.name, module: hex(m.$addr), kobject: hex(kobjects.get(m.$addr) ?? 0n), listNext: hex(m.list.next.addr), listPrev: hex(m.list.prev.addr) },
        });
      // A module being loaded (UNFORMED/COMING) has no kobject yet; only a live one must have it.
      const live = k.model.constant('MODULE_STATE_LIVE');
      for (const [addr, name] of listed)
        if (!kobjects.has(addr) && states.get(addr) === live)
          alerts.push({
            check: 'modules',
            kind: 'module-hidden-from-sysfs',
            message: `module ${name} is loaded but has no kobject in module_kset`,
            evidence: { name, module: hex(addr) },
          });
      const data = [...listed].map(([addr, name]) => ({ name, addr: hex(addr), state: states.get(addr) ?? -1 }));
      return { alerts, data };
    },
  };
}
