// The moe family: the router GEMM, the dense SwiGLU, and moeForward, the whole MoE block.
export { MAX_ROUTER_EXPERTS, routerLogits, swiglu, type RouterLogitsOptions, type SwigluOptions } from './ops';
export {
  MoeWorkspace,
  createMoeWorkspace,
  moeForward,
  type MoeActivations,
  type MoeExperts,
  type MoeForwardOptions,
  type MoeRouter,
  type MoeWorkspaceOptions,
} from './forward';
export { moeForwardEp, type MoeForwardEpOptions } from './ep';
