import { create } from '@bufbuild/protobuf';
import { PaginationSchema, type Pagination } from '../../gen/proto/arcana/user/v1/user_pb.js';

export const DEFAULT_PAGE_SIZE = 20;
export const MAX_PAGE_SIZE = 100;

/** The page asked for, with proto3's zero meaning "default" and the size kept within 1–100. */
export function pageRequest(query: { page?: number; perPage?: number }): { page: number; perPage: number } {
  return {
    page: Math.max(1, query.page || 1),
    perPage: Math.min(MAX_PAGE_SIZE, Math.max(1, query.perPage || DEFAULT_PAGE_SIZE)),
  };
}

/** Where a page sits in a listing of `total` items. */
export function paginationOf(request: { page: number; perPage: number }, total: number): Pagination {
  return create(PaginationSchema, { ...request, total, totalPages: Math.ceil(total / request.perPage) });
}
