import { describe, expect, it } from 'vitest';
import { findQueryProblems, QUERY_TEXT_REFUSED, REPEATED_REFUSED, repeatedJsonKey } from '../../src/controllers/edge-input.ts';

const repeated = (json: string) => repeatedJsonKey(json);

describe('repeatedJsonKey', () => {
  it('when an object gives a name twice, at any depth or spelled with escapes, then that name', () => {
    expect(repeated('{"a":1,"a":2}')).toBe('a');
    expect(repeated('{"x":{"b":1,"c":[{"d":1},{"d":2,"d":3}]}}')).toBe('d');
    expect(repeated('{"name":1,"\\u006eame":2}')).toBe('name');
    expect(repeated('{"é":1,"\\u00e9":2}')).toBe('é');
  });

  it('when the text ends inside a string (it is never given such text, but must not loop), then none', () => {
    expect(repeated('{"a')).toBeUndefined();
    expect(repeated('["\\')).toBeUndefined();
  });

  it('when names repeat only across objects, or text looks like names, then none', () => {
    expect(repeated('{"a":1,"b":{"a":2},"c":[{"a":3},{"a":4}]}')).toBeUndefined();
    expect(repeated('{"a":"\\",\\"a\\":{","b":"}, \\"b\\""}')).toBeUndefined();
    expect(repeated('["a","a",{"a":1}]')).toBeUndefined();
    expect(repeated('"a"')).toBeUndefined();
  });
});

describe('findQueryProblems', () => {
  it('when text is not percent-encoded UTF-8, then the parameter is named; a bad name is the query', () => {
    expect(findQueryProblems('q=%FFx&page=1', false)).toEqual({ q: QUERY_TEXT_REFUSED });
    expect(findQueryProblems('q=%ED%A0%80', false)).toEqual({ q: QUERY_TEXT_REFUSED });
    expect(findQueryProblems('q=%Z1', false)).toEqual({ q: QUERY_TEXT_REFUSED });
    expect(findQueryProblems('q=\u00ff', false)).toEqual({ q: QUERY_TEXT_REFUSED });
    expect(findQueryProblems('%C0%AF=1', false)).toEqual({ query: QUERY_TEXT_REFUSED });
  });

  it('when names repeat, then they are refused only if asked', () => {
    expect(findQueryProblems('q=a&q=b', false)).toEqual({});
    expect(findQueryProblems('q=a&q%3D=b&q=c', true)).toEqual({ q: REPEATED_REFUSED });
  });

  it('when the text is well formed, then nothing, pluses and escapes included', () => {
    expect(findQueryProblems('q=caf%C3%A9+au+lait&sort=-createdAt&&flag', true)).toEqual({});
    expect(findQueryProblems('', true)).toEqual({});
  });
});
