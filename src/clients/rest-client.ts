// A typed REST client for applications that use Arcana Cloud: paths, bodies and answers are
// checked against openapi.yaml's generated types at compile time.
import createFetchClient, { type Client, type Middleware } from 'openapi-fetch';
import type { paths } from '../../gen/openapi/schema.d.ts';

export type ArcanaRestClient = Client<paths>;

/**
 * A client for `baseUrl` (e.g. http://localhost:3000). `getAccessToken`, when given, is asked
 * before each request and its token sent as `authorization: Bearer …`.
 */
export function createRestClient(baseUrl: string, getAccessToken?: () => string | undefined): ArcanaRestClient {
  const client = createFetchClient<paths>({ baseUrl });
  if (getAccessToken !== undefined) {
    const bearer: Middleware = {
      onRequest({ request }) {
        const token = getAccessToken();
        if (token !== undefined) request.headers.set('authorization', `Bearer ${token}`);
        return request;
      },
    };
    client.use(bearer);
  }
  return client;
}
