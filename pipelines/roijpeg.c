/* Decoding a window of a JPEG at a DCT scale: libjpeg-turbo's jpeg_crop_scanline (only the iMCU columns that
   cover the window go through the IDCT and colour conversion), jpeg_skip_scanlines (rows above the window
   are entropy-decoded only) and an abort after the window's last row (rows below are never read).
   Loaded with ctypes by pipelines/jpeg_window.py; built by setup.py (optional: without it fastkd decodes
   whole images with PIL). */
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <jpeglib.h>

struct fk_error {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char *msg;
    int msglen;
};

static void fk_error_exit(j_common_ptr cinfo) {
    struct fk_error *err = (struct fk_error *)cinfo->err;
    char buffer[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, buffer);
    snprintf(err->msg, err->msglen, "%s", buffer);
    longjmp(err->jump, 1);
}

/* Warnings (corrupt or truncated data that libjpeg would decode as grey) are kept: the call then fails and
   the caller decodes the image another way, which decides whether it is damaged. */
static void fk_emit_message(j_common_ptr cinfo, int level) {
    struct fk_error *err = (struct fk_error *)cinfo->err;
    if (level < 0 && err->pub.num_warnings++ == 0)
        (*cinfo->err->format_message)(cinfo, err->msg);
}

static void fk_setup(struct jpeg_decompress_struct *cinfo, struct fk_error *err, char *msg, int msglen) {
    cinfo->err = jpeg_std_error(&err->pub);
    err->pub.error_exit = fk_error_exit;
    err->pub.emit_message = fk_emit_message;
    err->msg = msg;
    err->msglen = msglen;
    msg[0] = 0;
}

/* Decode rows [y0, y1) and at least columns [x0, x1) of the image scaled by 1/denom (1, 2, 4 or 8) as RGB
   into out (cap bytes; rows of *cw pixels, *cx the first column decoded: x0 moved left to an iMCU boundary).
   msg needs JMSG_LENGTH_MAX (200) bytes. Returns 0; -1 on an error, -2 on a warning (corrupt data), -3 for
   a window outside the scaled image or a buffer too small; msg says why. */
int fk_jpeg_decode_window(const unsigned char *data, unsigned long size, int denom, int x0, int y0, int x1,
                          int y1, unsigned char *out, unsigned long cap, int *cx, int *cw, char *msg, int msglen) {
    struct jpeg_decompress_struct cinfo;
    struct fk_error err;
    JDIMENSION xoff, width;
    unsigned long stride;
    int row;
    fk_setup(&cinfo, &err, msg, msglen);
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, size);
    jpeg_read_header(&cinfo, TRUE);
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned int)denom;
    cinfo.out_color_space = JCS_RGB;
    jpeg_start_decompress(&cinfo);
    if (x0 < 0 || y0 < 0 || x1 > (int)cinfo.output_width || y1 > (int)cinfo.output_height || x0 >= x1 || y0 >= y1) {
        snprintf(msg, msglen, "window [%d, %d) x [%d, %d) outside the %ux%u image at scale 1/%d", x0, x1, y0, y1,
                 cinfo.output_width, cinfo.output_height, denom);
        jpeg_destroy_decompress(&cinfo);
        return -3;
    }
    xoff = (JDIMENSION)x0;
    width = (JDIMENSION)(x1 - x0);
    if (xoff > 0 || width < cinfo.output_width)
        jpeg_crop_scanline(&cinfo, &xoff, &width);
    stride = (unsigned long)width * 3;
    if (stride * (unsigned long)(y1 - y0) > cap) {
        snprintf(msg, msglen, "window needs %lu bytes, the buffer holds %lu", stride * (unsigned long)(y1 - y0), cap);
        jpeg_destroy_decompress(&cinfo);
        return -3;
    }
    if (y0 > 0)
        jpeg_skip_scanlines(&cinfo, (JDIMENSION)y0);
    for (row = 0; row < y1 - y0;) {
        JSAMPROW line = out + stride * (unsigned long)row;
        row += (int)jpeg_read_scanlines(&cinfo, &line, 1);
    }
    *cx = (int)xoff;
    *cw = (int)width;
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return err.pub.num_warnings ? -2 : 0;
}
