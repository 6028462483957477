import { create } from '@bufbuild/protobuf';
import { PaginationSchema, type Pagination } from '../../gen/proto/arcana/user/v1/user_pb.js';
import { ValidationError } from '../domain/errors.ts';
import { USER_SORTS, type UserSort } from '../repositories/user-repository.ts';

export const DEFAULT_PAGE_SIZE = 20;
export const MAX_PAGE_SIZE = 100;

/** The page asked for, with proto3's zero meaning "default" and the size kept within 1–100. */
export function pageRequest(query: { page?: number; perPage?: number }): { page: number; perPage: number } {
  return {
    page: Math.max(1, orDefault(query.page, 1)),
    perPage: Math.min(MAX_PAGE_SIZE, Math.max(1, orDefault(query.perPage, DEFAULT_PAGE_SIZE))),
  };
}

/** proto3 cannot tell an unset number from 0: both mean the default. */
function orDefault(value: number | undefined, fallback: number): number {
  return value === undefined || value === 0 ? fallback : value;
}

/** Where a page sits in a listing of `total` items. */
export function paginationOf(request: { page: number; perPage: number }, total: number): Pagination {
  return create(PaginationSchema, { ...request, total, totalPages: Math.ceil(total / request.perPage) });
}

/**
 * The order of a user listing: empty means the default, anything else must be one of the sorts.
 * The edges check it against openapi.yaml first; this keeps callers of the service layer honest.
 */
export function userSortOf(sort: string | undefined): UserSort | undefined {
  if (sort === undefined || sort === '') return undefined;
  if ((USER_SORTS as readonly string[]).includes(sort)) return sort as UserSort;
  throw new ValidationError('Validation failed', { sort: `must be one of ${USER_SORTS.join(', ')}` });
}
