// The start page: the header and the calls to action follow the session; nothing else to load.
import { startPage } from "../common.js";

startPage(async () => {});
