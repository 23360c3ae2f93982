// The collectives a process group carries out: a leaf that both the group's interface and the
// TCP wire format name, so neither imports the other and the public types need no Node types.

/** The collectives a group carries out; their wire codes are their indices here. */
export const COLLECTIVES = ['allGather', 'broadcast', 'barrier', 'allToAll'] as const;
export type Collective = (typeof COLLECTIVES)[number];
