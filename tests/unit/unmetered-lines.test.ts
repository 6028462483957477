// The budget of request lines charged to no rate limit (logger.ts, unmeteredLine): the lines past
// it are counted in one line as its interval ends, and the next interval logs in full again.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { UNMETERED_INTERVAL_MS, UNMETERED_LINES_PER_INTERVAL, unmeteredLine } from '../../src/infrastructure/logger.ts';
import { capturingLogger } from '../helpers/test-app.ts';

describe('unmeteredLine', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('when a flood passes the budget, then the first lines are logged in full, the rest counted in one line as the interval ends, and the next interval logs again', async () => {
    const { logger, lines } = capturingLogger('info');
    const flood = UNMETERED_LINES_PER_INTERVAL + 150;
    for (let i = 0; i < flood; i += 1) unmeteredLine(logger, 'info', { n: i }, 'request completed');
    await vi.advanceTimersByTimeAsync(UNMETERED_INTERVAL_MS);
    unmeteredLine(logger, 'warn', { n: flood }, 'request completed');
    await vi.advanceTimersByTimeAsync(UNMETERED_INTERVAL_MS);
    const logged = lines.filter((line) => line.msg === 'request completed').map((line) => line.n);
    expect(logged).toEqual([...Array.from({ length: UNMETERED_LINES_PER_INTERVAL }, (_, i) => i), flood]);
    const summaries = lines.filter((line) => line.msg.startsWith('request lines not logged'));
    // One summary, for the interval that had more; none for the quiet one after.
    expect(summaries.map((line) => [line.level, line.suppressed])).toEqual([['warn', 150]]);
  });

  it('when two loggers log, then each has its budget', () => {
    const [first, second] = [capturingLogger('info'), capturingLogger('info')];
    for (let i = 0; i < UNMETERED_LINES_PER_INTERVAL; i += 1) unmeteredLine(first.logger, 'info', {}, 'request completed');
    unmeteredLine(second.logger, 'info', {}, 'request completed');
    expect(second.lines).toHaveLength(1);
  });
});
