/**
 * Where the authority's IDS registration hands over a heartbeat key: the heartbeat service
 * (src/authority/heartbeat.ts) implements it and starts challenging the session's IDS.
 */
export interface HeartbeatBinding {
  vmId: string;
  hostId: string;
  measurement: string;
}

export interface HeartbeatRegistry {
  register(sessionId: string, binding: HeartbeatBinding, heartbeatKey: Buffer): void | Promise<void>;
}
