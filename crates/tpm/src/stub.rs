//! The backend of a build without the `tpm` feature: it cannot be opened, so no other method
//! is reachable.

use zeroize::Zeroizing;

use crate::{
    Certification, EcdsaP384Signature, KeyPublic, Quote, SealedBlob, TpmConfig, TpmError, TpmInfo,
};

/// Uninhabited: [`Backend::open`] always fails.
pub(crate) enum Backend {}

impl Backend {
    pub(crate) fn open(_config: &TpmConfig) -> Result<Self, TpmError> {
        Err(TpmError::NotBuilt)
    }

    pub(crate) fn info(&mut self) -> Result<TpmInfo, TpmError> {
        match *self {}
    }

    pub(crate) fn signing_key(&mut self) -> Result<KeyPublic, TpmError> {
        match *self {}
    }

    pub(crate) fn attestation_key(&mut self) -> Result<KeyPublic, TpmError> {
        match *self {}
    }

    pub(crate) fn sign_digest(
        &mut self,
        _digest: &[u8; 48],
    ) -> Result<(EcdsaP384Signature, Vec<u8>), TpmError> {
        match *self {}
    }

    pub(crate) fn certify(&mut self, _nonce: &[u8]) -> Result<Certification, TpmError> {
        match *self {}
    }

    pub(crate) fn ek_public(&mut self) -> Result<[u8; 65], TpmError> {
        match *self {}
    }

    pub(crate) fn ek_certificate(&mut self) -> Option<Vec<u8>> {
        match *self {}
    }

    pub(crate) fn activate_credential(
        &mut self,
        _id_object: &[u8],
        _encrypted_secret: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        match *self {}
    }

    pub(crate) fn pcr_read(&mut self, _pcrs: &[u32]) -> Result<Vec<[u8; 32]>, TpmError> {
        match *self {}
    }

    pub(crate) fn pcr_extend(&mut self, _index: u32, _digest: &[u8; 32]) -> Result<(), TpmError> {
        match *self {}
    }

    pub(crate) fn pcr_reset(&mut self, _index: u32) -> Result<(), TpmError> {
        match *self {}
    }

    pub(crate) fn quote(&mut self, _pcrs: &[u32], _qualifying: &[u8]) -> Result<Quote, TpmError> {
        match *self {}
    }

    pub(crate) fn seal(&mut self, _secret: &[u8], _pcrs: &[u32]) -> Result<SealedBlob, TpmError> {
        match *self {}
    }

    pub(crate) fn unseal(&mut self, _blob: &SealedBlob) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        match *self {}
    }
}
