// Who is calling and from where, as the service layer's internal API carries it. The domain's
// Actor and ClientInfo are plain objects; on the wire they are arcana.internal.service.v1
// messages. Both fields of ClientInfo are proto3 `optional`, so "not known" (undefined) stays
// distinct from an empty string on the other side.
import { create } from '@bufbuild/protobuf';
import { ActorSchema, ClientInfoSchema, type Actor as ActorMessage, type ClientInfo as ClientInfoMessage } from '../../../gen/proto/arcana/internal/service/v1/caller_pb.js';
import type { Actor, ClientInfo } from '../../domain/actor.ts';

export function actorToProto(actor: Actor): ActorMessage {
  return create(ActorSchema, {
    userId: actor.userId,
    role: actor.role,
    sessionId: actor.sessionId,
    ...(actor.client === undefined ? {} : { client: clientInfoToProto(actor.client) }),
  });
}

export function actorFromProto(message: ActorMessage): Actor {
  return {
    userId: message.userId,
    role: message.role,
    sessionId: message.sessionId,
    ...(message.client === undefined ? {} : { client: clientInfoFromProto(message.client) }),
  };
}

export function clientInfoToProto(client: ClientInfo): ClientInfoMessage {
  // create() leaves a field unset when its init value is undefined, which keeps absence absent.
  return create(ClientInfoSchema, { ipAddress: client.ipAddress, userAgent: client.userAgent, deviceToken: client.deviceToken });
}

/** The domain's ClientInfo; a request without one comes from a client nothing is known about. */
export function clientInfoFromProto(message: ClientInfoMessage | undefined): ClientInfo {
  return { ipAddress: message?.ipAddress, userAgent: message?.userAgent, deviceToken: message?.deviceToken };
}
