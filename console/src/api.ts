// The console's only way to the server: Connect clients over the protocol the operator picked,
// typed by the generated service descriptors in gen/. Tokens live in this module's memory only.
import { Code, ConnectError, createClient, type Client, type Interceptor, type Transport } from '@connectrpc/connect';
import { createConnectTransport, createGrpcWebTransport } from '@connectrpc/connect-web';
import { AuditService } from '../../gen/proto/arcana/audit/v1/audit_service_pb.js';
import { AuthService, type TokenPair } from '../../gen/proto/arcana/auth/v1/auth_service_pb.js';
import type { User } from '../../gen/proto/arcana/user/v1/user_pb.js';
import { UserService } from '../../gen/proto/arcana/user/v1/user_service_pb.js';

export type Protocol = 'grpc-web' | 'connect';
export const PROTOCOLS: readonly Protocol[] = ['grpc-web', 'connect'];

const PROTOCOL_KEY = 'arcana-console-protocol';

/** The protocol setting: `?protocol=` wins, then this tab's last choice, then gRPC-Web. */
export function initialProtocol(): Protocol {
  const asked = new URLSearchParams(location.search).get('protocol');
  if (asked === 'grpc-web' || asked === 'connect') return asked;
  const stored = sessionStorage.getItem(PROTOCOL_KEY);
  return stored === 'connect' ? 'connect' : 'grpc-web';
}

interface Session {
  accessToken: string;
  refreshToken: string;
  user: User;
}

export interface Api {
  readonly protocol: Protocol;
  auth: Client<typeof AuthService>;
  users: Client<typeof UserService>;
  audit: Client<typeof AuditService>;
}

/** What the console shows when it has to end the session on its own (expired, revoked). */
type SignedOutListener = (reason: string | undefined) => void;

/**
 * The signed-in administrator's session. The access and refresh tokens are held in this object
 * only: never in storage, cookies or the DOM, so a reload or a closed tab ends the session.
 */
export class ConsoleSession {
  #protocol: Protocol;
  #session: Session | undefined;
  #refreshTimer: ReturnType<typeof setTimeout> | undefined;
  #refreshing: Promise<boolean> | undefined;
  #api: Api;
  #onSignedOut: SignedOutListener = () => undefined;
  /** Calls that must not overlap a rotation (see `exclusive`), and a rotation they held back. */
  #holds = 0;
  #deferredRefresh = false;
  /** How many times the token pair was rotated by this session (shown on My account). */
  refreshCount = 0;

  constructor(protocol: Protocol) {
    this.#protocol = protocol;
    this.#api = this.#createApi();
  }

  /** The session as it is now; a method, so that a read after an await is not narrowed away. */
  #currentSession(): Session | undefined {
    return this.#session;
  }

  get api(): Api {
    return this.#api;
  }

  get protocol(): Protocol {
    return this.#protocol;
  }

  get user(): User | undefined {
    return this.#session?.user;
  }

  set onSignedOut(listener: SignedOutListener) {
    this.#onSignedOut = listener;
  }

  /** Switches the protocol for every later call (only while signed out). */
  setProtocol(protocol: Protocol): void {
    this.#protocol = protocol;
    sessionStorage.setItem(PROTOCOL_KEY, protocol);
    this.#api = this.#createApi();
  }

  async signIn(usernameOrEmail: string, password: string): Promise<User> {
    const { user, tokens } = await this.#api.auth.login({ usernameOrEmail, password });
    if (user === undefined || tokens === undefined) throw new ConnectError('The server sent no user or tokens', Code.Internal);
    this.#start(user, tokens);
    return user;
  }

  /** Ends the session on the server (best effort) and forgets the tokens. */
  async signOut(): Promise<void> {
    if (this.#session !== undefined) {
      try {
        // Ends the pair the access token belongs to: not while a rotation could replace it, and
        // with no rotation scheduled after it.
        await this.exclusive(() => {
          this.#stopRefreshing();
          return this.#api.auth.logout({});
        });
      } catch {
        // The tokens are dropped either way; a session the server no longer knows is ended.
      }
    }
    this.#forget();
  }

  /**
   * The page is being left (pagehide): the tokens are forgotten at once, as a closed tab forgets
   * them, and the pair is ended on the server by a request that outlives the page (best effort).
   * A page left by navigation is kept whole in the browser's back-forward cache: Back handed the
   * next person at the browser the signed-in console, tokens and refresh timer included (helper
   * 162).
   */
  leave(): void {
    const session = this.#session;
    if (session === undefined) return;
    this.#forget();
    void fetch(`${location.origin}/${AuthService.typeName}/${AuthService.method.logout.name}`, {
      method: 'POST',
      keepalive: true,
      headers: { 'content-type': 'application/json', 'connect-protocol-version': '1', authorization: `Bearer ${session.accessToken}` },
      body: '{}',
    }).catch(() => undefined);
  }

  /** Forgets the tokens without calling the server, e.g. after the user revoked them all. */
  forget(reason?: string): void {
    this.#forget();
    this.#onSignedOut(reason);
  }

  /** Refreshes the user shown in the header (after changing one's own account). */
  updateUser(user: User): void {
    if (this.#session !== undefined) this.#session.user = user;
  }

  #forget(): void {
    this.#stopRefreshing();
    this.#session = undefined;
  }

  #stopRefreshing(): void {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = undefined;
    this.#deferredRefresh = false;
  }

  #start(user: User, tokens: TokenPair): void {
    this.#session = { user, accessToken: tokens.accessToken, refreshToken: tokens.refreshToken };
    this.#schedule(tokens.expiresIn);
  }

  /** Rotates the pair before the access token expires: at 3/4 of its life, and at most 5 min early. */
  #schedule(expiresInSeconds: number): void {
    clearTimeout(this.#refreshTimer);
    const lifeMs = expiresInSeconds * 1000;
    const delay = Math.max(500, Math.max(lifeMs * 0.75, lifeMs - 5 * 60_000));
    this.#refreshTimer = setTimeout(() => {
      if (this.#holds > 0) this.#deferredRefresh = true;
      else void this.refresh();
    }, delay);
  }

  /**
   * Runs a call that names "this session" to the server with no rotation in flight: a password
   * change ends the caller's *other* sessions, and a pair rotated while it was on its way would be
   * one of them; a logout ends the caller's pair, and would leave the rotated one alive. A
   * scheduled rotation waits until the call is over.
   */
  async exclusive<T>(run: () => Promise<T>): Promise<T> {
    await this.#refreshing;
    this.#holds += 1;
    try {
      return await run();
    } finally {
      this.#holds -= 1;
      if (this.#holds === 0 && this.#deferredRefresh) {
        this.#deferredRefresh = false;
        void this.refresh();
      }
    }
  }

  /** One rotation at a time; false (and signed out) when the server refuses the refresh token. */
  refresh(): Promise<boolean> {
    this.#refreshing ??= this.#rotate().finally(() => (this.#refreshing = undefined));
    return this.#refreshing;
  }

  async #rotate(): Promise<boolean> {
    const session = this.#session;
    if (session === undefined) return false;
    try {
      const { tokens } = await this.#api.auth.refreshToken({ refreshToken: session.refreshToken });
      if (tokens === undefined || this.#session !== session) return false;
      session.accessToken = tokens.accessToken;
      session.refreshToken = tokens.refreshToken;
      this.refreshCount += 1;
      this.#schedule(tokens.expiresIn);
      return true;
    } catch (error) {
      if (this.#session !== session) return false;
      const reason = ConnectError.from(error);
      if (reason.code === Code.Unauthenticated || reason.code === Code.PermissionDenied) {
        this.forget('Your session has ended. Sign in again.');
        return false;
      }
      // A network failure: try again shortly, while the access token may still be good.
      this.#refreshTimer = setTimeout(() => void this.refresh(), 5_000);
      return false;
    }
  }

  #createApi(): Api {
    // Every call but the token-less ones carries the access token; a call refused as
    // unauthenticated (the token expired while the tab slept) is tried once more after a refresh.
    const bearer: Interceptor = (next) => async (request) => {
      const tokenless = request.method.name === 'Login' || request.method.name === 'RefreshToken' || request.method.name === 'Register';
      const session = this.#session;
      if (tokenless || session === undefined) return next(request);
      const used = session.accessToken;
      request.header.set('authorization', `Bearer ${used}`);
      try {
        return await next(request);
      } catch (error) {
        // A logout too: refused with an access token that expired while the tab slept, it left the
        // session live on the server while the console showed "Signed out." (helper 112).
        if (ConnectError.from(error).code !== Code.Unauthenticated) throw error;
        if (this.#session !== session) throw error;
        // Unless another call rotated the pair meanwhile, rotate it now.
        if (session.accessToken === used && !(await this.refresh())) throw error;
        // Read anew: the refresh (or a sign-out meanwhile) replaced the session.
        const current = this.#currentSession();
        if (current === undefined) throw error;
        request.header.set('authorization', `Bearer ${current.accessToken}`);
        return next(request);
      }
    };
    const baseUrl = location.origin;
    const transport: Transport =
      this.#protocol === 'connect' ? createConnectTransport({ baseUrl, interceptors: [bearer] }) : createGrpcWebTransport({ baseUrl, interceptors: [bearer] });
    return {
      protocol: this.#protocol,
      auth: createClient(AuthService, transport),
      users: createClient(UserService, transport),
      audit: createClient(AuditService, transport),
    };
  }
}
