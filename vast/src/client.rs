//! TODO(vast helper): module client
