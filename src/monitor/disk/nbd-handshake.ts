/**
 * Server side of the fixed-newstyle handshake (option haggling). Resolves with the chosen
 * export once the client enters transmission, or with null when the session ended here.
 * Anything the spec says must end the session (bad magic, unknown client flags, an
 * EXPORT_NAME we cannot satisfy) throws HandshakeRefused; the caller drops the connection.
 */
import type { Socket } from 'node:net';
import {
  MAX_INFO_REQUEST_LENGTH,
  MAX_STRING_LENGTH,
  NbdClientFlag,
  NbdHandshakeFlag,
  NbdInfo,
  NbdOpt,
  NbdRep,
  OPTION_HEADER_SIZE,
} from '../../formats/nbd/constants.ts';
import { NbdProtocolError } from '../../formats/nbd/bytes.ts';
import {
  decodeClientFlags,
  decodeExportName,
  decodeOptionHeader,
  encodeExportNameReply,
  encodeOptionError,
  encodeOptionReply,
  encodeServerEntry,
  encodeServerGreeting,
} from '../../formats/nbd/handshake.ts';
import { decodeInfoRequest, encodeInfoBlockSize, encodeInfoExport, encodeInfoName } from '../../formats/nbd/info.ts';
import type { ExportTable, NbdExport } from './nbd-exports.ts';
import type { SocketReader } from './nbd-socket-reader.ts';

export class HandshakeRefused extends Error {
  override readonly name = 'HandshakeRefused';
}

export interface Negotiated {
  export: NbdExport;
  structuredReplies: boolean;
}

const KNOWN_CLIENT_FLAGS = NbdClientFlag.FIXED_NEWSTYLE | NbdClientFlag.NO_ZEROES;

/** Client-supplied names inside our messages are cut short so the message stays a valid NBD string. */
const quote = (name: string): string => JSON.stringify(name.length > 64 ? `${name.slice(0, 64)}...` : name);

export async function negotiate(socket: Socket, reader: SocketReader, exports: ExportTable): Promise<Negotiated | null> {
  socket.write(encodeServerGreeting(NbdHandshakeFlag.FIXED_NEWSTYLE | NbdHandshakeFlag.NO_ZEROES));
  const clientFlags = decodeClientFlags(await reader.read(4));
  if (clientFlags & ~KNOWN_CLIENT_FLAGS) throw new HandshakeRefused(`unknown client flags 0x${clientFlags.toString(16)}`);
  if (!(clientFlags & NbdClientFlag.FIXED_NEWSTYLE)) {
    throw new HandshakeRefused('client does not speak fixed newstyle negotiation (only fixed newstyle is served)');
  }
  const noZeroes = (clientFlags & NbdClientFlag.NO_ZEROES) !== 0;
  let structuredReplies = false;

  for (;;) {
    let header;
    try {
      header = decodeOptionHeader(await reader.read(OPTION_HEADER_SIZE));
    } catch (err) {
      if (err instanceof NbdProtocolError) throw new HandshakeRefused(err.message);
      throw err;
    }
    const { option, length } = header;
    const reply = (type: number, data?: Buffer): void => {
      socket.write(encodeOptionReply(option, type, data));
    };
    const refuse = async (type: number, message: string): Promise<void> => {
      await reader.skip(length);
      socket.write(encodeOptionError(option, type, message));
    };

    switch (option) {
      case NbdOpt.EXPORT_NAME: {
        // This option cannot be answered with an error: the spec says to end the session.
        if (length > MAX_STRING_LENGTH) throw new HandshakeRefused(`NBD_OPT_EXPORT_NAME: name of ${length} bytes`);
        let name: string;
        try {
          name = decodeExportName(await reader.read(length));
        } catch (err) {
          if (err instanceof NbdProtocolError) throw new HandshakeRefused(`NBD_OPT_EXPORT_NAME: ${err.message}`);
          throw err;
        }
        const exp = exports.lookup(name);
        if (!exp) throw new HandshakeRefused(`NBD_OPT_EXPORT_NAME: unknown export ${quote(name)}`);
        socket.write(encodeExportNameReply(exp.size, exp.transmissionFlags, noZeroes));
        return { export: exp, structuredReplies };
      }

      case NbdOpt.ABORT:
        // Any data is ignored, as the spec asks; the client drops the connection after our ACK.
        reply(NbdRep.ACK);
        socket.end();
        return null;

      case NbdOpt.LIST: {
        if (length !== 0) {
          await refuse(NbdRep.ERR_INVALID, 'NBD_OPT_LIST takes no data');
          break;
        }
        const entries = exports.list().map((e) => encodeOptionReply(option, NbdRep.SERVER, encodeServerEntry(e.name)));
        socket.write(Buffer.concat([...entries, encodeOptionReply(option, NbdRep.ACK)]));
        break;
      }

      case NbdOpt.INFO:
      case NbdOpt.GO: {
        if (length > MAX_INFO_REQUEST_LENGTH) {
          await refuse(NbdRep.ERR_INVALID, `option data of ${length} bytes is longer than any valid request`);
          break;
        }
        let request;
        try {
          request = decodeInfoRequest(await reader.read(length));
        } catch (err) {
          if (!(err instanceof NbdProtocolError)) throw err;
          socket.write(encodeOptionError(option, NbdRep.ERR_INVALID, err.message));
          break;
        }
        const exp = exports.lookup(request.name);
        if (!exp) {
          socket.write(encodeOptionError(option, NbdRep.ERR_UNKNOWN, `unknown export ${quote(request.name)}`));
          break;
        }
        // Block sizes are always sent (the spec allows unrequested info); the server enforces them
        // on every request regardless, so clients that did not ask are served safely too.
        const infos = [encodeInfoExport(exp.size, exp.transmissionFlags), encodeInfoBlockSize(exp.blockSizes)];
        if (request.requests.includes(NbdInfo.NAME)) infos.push(encodeInfoName(exp.name));
        const replies = infos.map((info) => encodeOptionReply(option, NbdRep.INFO, info));
        socket.write(Buffer.concat([...replies, encodeOptionReply(option, NbdRep.ACK)]));
        if (option === NbdOpt.GO) return { export: exp, structuredReplies };
        break;
      }

      case NbdOpt.STRUCTURED_REPLY:
        if (length !== 0) {
          await refuse(NbdRep.ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
          break;
        }
        structuredReplies = true;
        reply(NbdRep.ACK);
        break;

      default:
        // Includes STARTTLS (this server runs in NOTLS mode) and the metadata-context options.
        await refuse(NbdRep.ERR_UNSUP, `option ${option} is not supported`);
    }
  }
}
