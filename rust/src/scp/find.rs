//! C-FIND: the host matches, each response identifier is sent as it comes, a C-CANCEL-RQ ends it.

use super::association::{Association, Flow};
use super::*;
use crate::dimse::{self, Command};
use crate::transport::Channel;
use std::io;
use std::time::Instant;

impl<'a, S: Channel> Association<'a, S> {
    /// C-FIND: a pending response with each identifier the host produces, then the final one;
    /// a C-CANCEL-RQ arriving meanwhile ends the responses with status Cancel.
    pub(super) fn find(
        &mut self,
        command: &Command,
        context_id: u8,
        identifier: Vec<u8>,
        started: Instant,
    ) -> io::Result<Flow> {
        let request = self.query_request(command, context_id, identifier);
        let mut status = SUCCESS;
        let mut count = 0usize;
        let mut unsent = Vec::new();
        match self.shared.host.find(request) {
            Err(refused) => status = refused,
            Ok(matches) => {
                let pending = dimse::find_response(command, PENDING);
                for found in matches {
                    if self.cancel_arrived()? {
                        status = CANCEL;
                        break;
                    }
                    let found = match found {
                        Ok(found) => found,
                        Err(why) => {
                            self.log(
                                LogLevel::Error,
                                format!("C-FIND from {}: {why}", self.who()),
                            );
                            status = OUT_OF_RESOURCES;
                            break;
                        }
                    };
                    unsent.extend(self.message(context_id, true, &pending));
                    unsent.extend(self.message(context_id, false, &found));
                    count += 1;
                    if unsent.len() >= GATHER {
                        self.stream.write_all(&unsent)?;
                        unsent.clear();
                    }
                }
            }
        }
        unsent.extend(self.message(context_id, true, &dimse::find_response(command, status)));
        self.stream.write_all(&unsent)?;
        self.log_request("C-FIND", started, status, &format!("{count} matches"));
        Ok(Flow::Continue)
    }
}
