/**
 * The BPF Type Format's type records as this project models them (kernel Documentation/bpf/btf.rst,
 * include/uapi/linux/btf.h). One entry per type id; id 0 is `void`. Names are decoded strings ('' when
 * anonymous); references are type ids, already checked to exist.
 */

export class BtfError extends Error {
  override name = 'BtfError';
}

/** Kind numbers as stored in bits 24-28 of btf_type.info, in order. */
export const BTF_KIND_NAMES = [
  'VOID',
  'INT',
  'PTR',
  'ARRAY',
  'STRUCT',
  'UNION',
  'ENUM',
  'FWD',
  'TYPEDEF',
  'VOLATILE',
  'CONST',
  'RESTRICT',
  'FUNC',
  'FUNC_PROTO',
  'VAR',
  'DATASEC',
  'FLOAT',
  'DECL_TAG',
  'TYPE_TAG',
  'ENUM64',
] as const;
export type BtfKind = (typeof BTF_KIND_NAMES)[number];

export type Linkage = 'static' | 'global' | 'extern';

interface Base {
  id: number;
  name: string;
}

export interface BtfVoid extends Base {
  kind: 'VOID';
}
export interface BtfInt extends Base {
  kind: 'INT';
  size: number;
  signed: boolean;
  char: boolean;
  bool: boolean;
  /** BTF_INT_OFFSET: bit offset of the value inside the int (old-style bitfields). */
  bitOffset: number;
  /** BTF_INT_BITS. */
  bits: number;
}
/** PTR, TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG: a name (typedef, tag) and a referenced type. */
export interface BtfRef extends Base {
  kind: 'PTR' | 'TYPEDEF' | 'VOLATILE' | 'CONST' | 'RESTRICT' | 'TYPE_TAG';
  type: number;
}
export interface BtfArray extends Base {
  kind: 'ARRAY';
  type: number;
  indexType: number;
  nelems: number;
}
export interface BtfMember {
  name: string;
  type: number;
  /** Offset from the start of the struct, in bits. */
  bitOffset: number;
  /** Width of a bitfield member (kind_flag structs); 0 for an ordinary member. */
  bitfieldSize: number;
}
export interface BtfComposite extends Base {
  kind: 'STRUCT' | 'UNION';
  size: number;
  members: BtfMember[];
}
export interface BtfEnumValue {
  name: string;
  value: bigint;
}
/** ENUM and ENUM64; values are exact (an ENUM64 may use all 64 bits). */
export interface BtfEnum extends Base {
  kind: 'ENUM' | 'ENUM64';
  size: number;
  signed: boolean;
  values: BtfEnumValue[];
}
export interface BtfFwd extends Base {
  kind: 'FWD';
  union: boolean;
}
export interface BtfFunc extends Base {
  kind: 'FUNC';
  /** The FUNC_PROTO. */
  type: number;
  linkage: Linkage;
}
export interface BtfParam {
  name: string;
  type: number;
}
export interface BtfFuncProto extends Base {
  kind: 'FUNC_PROTO';
  returnType: number;
  params: BtfParam[];
}
export interface BtfVar extends Base {
  kind: 'VAR';
  type: number;
  linkage: Linkage;
}
export interface BtfVarSecinfo {
  type: number;
  offset: number;
  size: number;
}
export interface BtfDatasec extends Base {
  kind: 'DATASEC';
  size: number;
  vars: BtfVarSecinfo[];
}
export interface BtfFloat extends Base {
  kind: 'FLOAT';
  size: number;
}
export interface BtfDeclTag extends Base {
  kind: 'DECL_TAG';
  type: number;
  /** -1 tags the type itself; otherwise the member or parameter index. */
  componentIdx: number;
}

export type BtfType =
  | BtfVoid
  | BtfInt
  | BtfRef
  | BtfArray
  | BtfComposite
  | BtfEnum
  | BtfFwd
  | BtfFunc
  | BtfFuncProto
  | BtfVar
  | BtfDatasec
  | BtfFloat
  | BtfDeclTag;

/** The record type of one kind (distributes over BtfType, so kinds that share a record work too). */
export type BtfTypeOf<K extends BtfKind> = BtfType & { kind: K };
