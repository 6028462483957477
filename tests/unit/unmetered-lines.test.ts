// The budget of request lines charged to no rate limit (logger.ts, unmeteredLine): the lines past
// it are counted in one line as its interval ends, and the next interval logs in full again.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { flushUnmeteredLines, UNMETERED_INTERVAL_MS, UNMETERED_LINES_PER_INTERVAL, unmeteredLine } from '../../src/infrastructure/logger.ts';
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
    expect(summaries.map((line) => [line.level, line.levels, line.suppressed])).toEqual([['warn', 'info', 150]]);
  });

  it('when info lines pass their budget, then warnings and errors are still logged, from a budget of their own (helper 211: a /health flood hid /ready 503s)', async () => {
    const { logger, lines } = capturingLogger('info');
    for (let i = 0; i < UNMETERED_LINES_PER_INTERVAL + 50; i += 1) unmeteredLine(logger, 'info', {}, 'request completed');
    unmeteredLine(logger, 'warn', { status: 503 }, 'request completed');
    unmeteredLine(logger, 'error', { status: 500 }, 'request completed');
    expect(lines.filter((line) => line.msg === 'request completed' && line.level !== 'info').map((line) => line.status)).toEqual([503, 500]);
    for (let i = 0; i < UNMETERED_LINES_PER_INTERVAL; i += 1) unmeteredLine(logger, 'warn', { status: 503 }, 'request completed');
    await vi.advanceTimersByTimeAsync(UNMETERED_INTERVAL_MS);
    const summaries = lines.filter((line) => line.msg.startsWith('request lines not logged'));
    expect(summaries.map((line) => [line.levels, line.suppressed])).toEqual([
      ['info', 50],
      ['warn/error', 2],
    ]);
  });

  it('when the process shuts down within an interval, then the count of the lines not logged is written then, once (helper 215: it was lost)', async () => {
    const { logger, lines } = capturingLogger('info');
    for (let i = 0; i < UNMETERED_LINES_PER_INTERVAL + 30; i += 1) unmeteredLine(logger, 'info', {}, 'request completed');
    await vi.advanceTimersByTimeAsync(UNMETERED_INTERVAL_MS / 2);
    flushUnmeteredLines();
    const summaries = () => lines.filter((line) => line.msg.startsWith('request lines not logged')).map((line) => line.suppressed);
    expect(summaries()).toEqual([30]);
    flushUnmeteredLines();
    await vi.advanceTimersByTimeAsync(UNMETERED_INTERVAL_MS);
    expect(summaries()).toEqual([30]);
  });

  it('when two loggers log, then each has its budget', () => {
    const [first, second] = [capturingLogger('info'), capturingLogger('info')];
    for (let i = 0; i < UNMETERED_LINES_PER_INTERVAL; i += 1) unmeteredLine(first.logger, 'info', {}, 'request completed');
    unmeteredLine(second.logger, 'info', {}, 'request completed');
    expect(second.lines).toHaveLength(1);
  });
});
