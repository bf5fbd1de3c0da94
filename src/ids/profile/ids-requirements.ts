/**
 * What the IDS reads from a guest kernel: the types whose layout it needs and the symbols whose
 * addresses it starts from. A profile built without `--all` holds exactly these (plus every type they
 * contain by value). Extend the lists here when a check needs more; names absent from a kernel are
 * reported by `vmseal ids profile`, not fatal, since configurations differ.
 */
export const IDS_PROFILE_REQUIREMENTS: {
  readonly types: readonly string[];
  readonly symbols: readonly string[];
  /** Types of the symbols above that BTF does not give (it types per-CPU variables only). */
  readonly symbolTypes: Readonly<Record<string, string>>;
} = {
  types: [
    // processes, credentials, namespaces
    'task_struct',
    'list_head',
    'hlist_head',
    'hlist_node',
    'cred',
    'kernel_cap_t',
    'user_namespace',
    'pid',
    'upid',
    'pid_namespace',
    'idr',
    'xarray',
    'xa_node',
    'signal_struct',
    'nsproxy',
    // memory maps (6.1 keeps VMAs in a maple tree)
    'mm_struct',
    'vm_area_struct',
    'maple_tree',
    'maple_node',
    // files
    'file',
    'files_struct',
    'fdtable',
    'path',
    'dentry',
    'qstr',
    'inode',
    'vfsmount',
    'mount',
    'super_block',
    // modules
    'module',
    'module_layout',
    'kobject',
    'kset',
    // IMA measurement list
    'ima_queue_entry',
    'ima_template_entry',
    'ima_template_desc',
    'ima_field_data',
    'ima_h_table',
    'tpm_digest',
  ],
  symbols: [
    'init_task',
    'init_pid_ns',
    'init_mm',
    'init_nsproxy',
    'init_cred',
    'modules',
    'module_kset',
    'sys_call_table',
    'idt_table',
    '_text',
    '_stext',
    '_etext',
    '_sdata',
    '_edata',
    '__start_rodata',
    '__end_rodata',
    'linux_banner',
    'vmlinux_build_id',
    'ima_measurements',
    'ima_htable',
    'ima_hash_algo',
    'ima_policy_flag',
    'ima_sha1_idx',
  ],
  symbolTypes: {
    init_task: 'task_struct',
    init_pid_ns: 'pid_namespace',
    init_mm: 'mm_struct',
    init_nsproxy: 'nsproxy',
    init_cred: 'cred',
    modules: 'list_head',
    module_kset: 'kset *',
    ima_measurements: 'list_head',
    ima_htable: 'ima_h_table',
    ima_hash_algo: 'int',
    ima_policy_flag: 'int',
    ima_sha1_idx: 'int',
    vmlinux_build_id: 'unsigned char[20]',
  },
};
