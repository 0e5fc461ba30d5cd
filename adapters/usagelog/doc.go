// Package usagelog reads and writes the offline usage log of the Cryptolens License Server
// (the `Data` parameter of UploadValues(ToKey)), and holds the server's RSA keys that unwrap it.
//
// A log is a chain of nested layers: each outer layer is a MessagePack array
// [IV, EncryptedKey, EncryptedObject], the key RSA-wrapped (PKCS#1 v1.5) for the server, the
// object AES-128-CBC encrypted with zero padding; inside is [[Increment, DataObjectId],
// Timestamp, PreviousObjectEncrypted], the previous file byte for byte, down to the single byte
// 0x00. See shared/spec/usage-log.md for the format and docs/usage-log.md for this package's
// bounds and error kinds.
//
// The package knows nothing of HTTP or the event store: the caller says which layers it already
// applied (a func(LayerID) bool) and gets the new entries back.
package usagelog
