import { currentCallContext } from '../infrastructure/call-context.ts';

/** How a write is asked for. */
export interface WriteOptions {
  /**
   * The call may repeat one already carried out whose answer was lost (a retry between layers,
   * REPEAT_HEADER in communication/layer-transport.ts). A write that finds its own result in place
   * answers as the first attempt would have: RFC 9110 (13.1.1) allows the same of HTTP, "the
   * change requested by the user agent has already succeeded". When absent, the call context of
   * the layer serving the call says.
   */
  repeat?: boolean | undefined;
}

/** Whether the write may repeat an earlier attempt of itself (see WriteOptions). */
export function isRepeat(options: WriteOptions): boolean {
  return options.repeat ?? currentCallContext()?.repeat === true;
}
